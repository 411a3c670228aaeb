#!/usr/bin/env bash
# meshplan 0.1.0 export for Megatron-LM
# model deepseek-v3, 256 GPUs, global batch 4096 x 4096 tokens, bf16
# plan: tp2 dp128 ep64 mbs1 zero1 rc=none
# mirrors Megatron-LM megatron/training/arguments.py (Megatron-Core 0.16)
# Data, tokenizer, optimizer and checkpoint flags are yours: pass them as
# arguments, e.g. bash train.sh --mock-data --tokenizer-type NullTokenizer ...
set -euo pipefail
export CUDA_DEVICE_MAX_CONNECTIONS=1  # validate_args wants it before Blackwell
torchrun --nproc-per-node "${GPUS_PER_NODE:-8}" --nnodes "${NNODES:-32}" --node-rank "${NODE_RANK:-0}" \
    --master-addr "${MASTER_ADDR:-localhost}" --master-port "${MASTER_PORT:-6000}" \
    pretrain_gpt.py \
    --tensor-model-parallel-size 2 \
    --pipeline-model-parallel-size 1 \
    --context-parallel-size 1 \
    --sequence-parallel \
    --micro-batch-size 1 \
    --global-batch-size 4096 \
    --num-layers 61 \
    --hidden-size 7168 \
    --ffn-hidden-size 18432 \
    --num-attention-heads 128 \
    --seq-length 4096 \
    --max-position-embeddings 163840 \
    --padded-vocab-size 129280 \
    --swiglu \
    --position-embedding-type rope \
    --normalization RMSNorm \
    --disable-bias-linear \
    --untie-embeddings-and-output-weights \
    --attention-dropout 0.0 \
    --hidden-dropout 0.0 \
    --rotary-base 10000 \
    --rope-type yarn \
    --rotary-scaling-factor 40.0 \
    --mscale 1.0 \
    --mscale-all-dim 1.0 \
    --norm-epsilon 1e-06 \
    --mtp-num-layers 1 \
    --num-experts 256 \
    --moe-router-topk 8 \
    --moe-ffn-hidden-size 2048 \
    --moe-router-score-function sigmoid \
    --moe-router-num-groups 8 \
    --moe-router-group-topk 4 \
    --moe-router-topk-scaling-factor 2.5 \
    --moe-router-enable-expert-bias \
    --moe-shared-expert-intermediate-size 2048 \
    --moe-layer-freq '([0]*3+[1]*58)' \
    --expert-model-parallel-size 64 \
    --expert-tensor-parallel-size 1 \
    --moe-token-dispatcher-type alltoall \
    --moe-grouped-gemm \
    --multi-latent-attention \
    --q-lora-rank 1536 \
    --kv-lora-rank 512 \
    --qk-head-dim 128 \
    --qk-pos-emb-head-dim 64 \
    --v-head-dim 128 \
    --bf16 \
    --use-distributed-optimizer \
    --num-distributed-optimizer-instances 2 \
    --overlap-grad-reduce \
    --overlap-param-gather \
    "$@"

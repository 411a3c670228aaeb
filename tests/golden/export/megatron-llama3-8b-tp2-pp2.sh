#!/usr/bin/env bash
# meshplan 0.1.0 export for Megatron-LM
# model llama3-8b, 64 GPUs, global batch 512 x 8192 tokens, bf16
# plan: tp2 pp2 dp16 mbs1 1f1b zero1 rc=selective
# mirrors Megatron-LM megatron/training/arguments.py (Megatron-Core 0.16)
# Data, tokenizer, optimizer and checkpoint flags are yours: pass them as
# arguments, e.g. bash train.sh --mock-data --tokenizer-type NullTokenizer ...
set -euo pipefail
export CUDA_DEVICE_MAX_CONNECTIONS=1  # validate_args wants it before Blackwell
torchrun --nproc-per-node "${GPUS_PER_NODE:-8}" --nnodes "${NNODES:-8}" --node-rank "${NODE_RANK:-0}" \
    --master-addr "${MASTER_ADDR:-localhost}" --master-port "${MASTER_PORT:-6000}" \
    pretrain_gpt.py \
    --tensor-model-parallel-size 2 \
    --pipeline-model-parallel-size 2 \
    --context-parallel-size 1 \
    --sequence-parallel \
    --micro-batch-size 1 \
    --global-batch-size 512 \
    --num-layers 32 \
    --hidden-size 4096 \
    --ffn-hidden-size 14336 \
    --num-attention-heads 32 \
    --group-query-attention \
    --num-query-groups 8 \
    --kv-channels 128 \
    --seq-length 8192 \
    --max-position-embeddings 8192 \
    --padded-vocab-size 128256 \
    --swiglu \
    --position-embedding-type rope \
    --normalization RMSNorm \
    --disable-bias-linear \
    --untie-embeddings-and-output-weights \
    --attention-dropout 0.0 \
    --hidden-dropout 0.0 \
    --rotary-base 500000 \
    --norm-epsilon 1e-05 \
    --bf16 \
    --recompute-granularity selective \
    --recompute-modules layernorm \
    --use-distributed-optimizer \
    --overlap-grad-reduce \
    --overlap-param-gather \
    "$@"

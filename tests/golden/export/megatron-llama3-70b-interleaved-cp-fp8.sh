#!/usr/bin/env bash
# meshplan 0.1.0 export for Megatron-LM
# model llama3-70b, 256 GPUs, global batch 512 x 8192 tokens, fp8
# plan: tp4 cp2 pp4 dp8 mbs1 interleaved-1f1b/v5 zero1 rc=full
# mirrors Megatron-LM megatron/training/arguments.py (Megatron-Core 0.16)
# Data, tokenizer, optimizer and checkpoint flags are yours: pass them as
# arguments, e.g. bash train.sh --mock-data --tokenizer-type NullTokenizer ...
set -euo pipefail
export CUDA_DEVICE_MAX_CONNECTIONS=1  # validate_args wants it before Blackwell
torchrun --nproc-per-node "${GPUS_PER_NODE:-8}" --nnodes "${NNODES:-32}" --node-rank "${NODE_RANK:-0}" \
    --master-addr "${MASTER_ADDR:-localhost}" --master-port "${MASTER_PORT:-6000}" \
    pretrain_gpt.py \
    --tensor-model-parallel-size 4 \
    --pipeline-model-parallel-size 4 \
    --context-parallel-size 2 \
    --sequence-parallel \
    --num-virtual-stages-per-pipeline-rank 5 \
    --tp-comm-overlap \
    --micro-batch-size 1 \
    --global-batch-size 512 \
    --train-samples 122070313 \
    --num-layers 80 \
    --hidden-size 8192 \
    --ffn-hidden-size 28672 \
    --num-attention-heads 64 \
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
    --fp8-format hybrid \
    --recompute-granularity full \
    --recompute-method uniform \
    --recompute-num-layers 1 \
    --use-distributed-optimizer \
    --overlap-grad-reduce \
    --overlap-param-gather \
    "$@"

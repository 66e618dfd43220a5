#!/usr/bin/env bash
# Create a Cloud TPU VM slice, copy this repository to every worker and run
# `ir-jax train` on all of them (jax.distributed auto-detects the slice).
#
#   tpu_configs/launch.sh v5litepod-16 tpu_configs/v5litepod_16.py gs://BUCKET/run
#
# Env: ZONE (default us-central2-b / per generation), NAME (ir-jax-<type>),
# RUNTIME (TPU software version), PROJECT (gcloud default if unset).
set -euo pipefail
TYPE=${1:?accelerator type, e.g. v4-8, v5litepod-16, v5p-64, v6e-256}
CONFIG=${2:?config file, e.g. tpu_configs/v4_8.py}
WORKDIR=${3:?workdir, e.g. gs://BUCKET/g2p (shared by all workers)}
NAME=${NAME:-ir-jax-${TYPE}}
case "$TYPE" in
  v4-*) ZONE=${ZONE:-us-central2-b}; RUNTIME=${RUNTIME:-tpu-ubuntu2204-base} ;;
  v5litepod-*) ZONE=${ZONE:-us-west4-a}; RUNTIME=${RUNTIME:-v2-alpha-tpuv5-lite} ;;
  v5p-*) ZONE=${ZONE:-us-east5-a}; RUNTIME=${RUNTIME:-v2-alpha-tpuv5} ;;
  v6e-*) ZONE=${ZONE:-us-east5-b}; RUNTIME=${RUNTIME:-v2-alpha-tpuv6e} ;;
  *) echo "unknown accelerator type $TYPE" >&2; exit 2 ;;
esac
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

gcloud compute tpus tpu-vm create "$NAME" --zone="$ZONE" \
  --accelerator-type="$TYPE" --version="$RUNTIME" $PROJECT_FLAG || true

tar -C "$ROOT" --exclude=runs --exclude=.git -czf /tmp/ir_jax.tgz .
gcloud compute tpus tpu-vm scp /tmp/ir_jax.tgz "$NAME":~/ir_jax.tgz \
  --zone="$ZONE" --worker=all $PROJECT_FLAG
gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker=all $PROJECT_FLAG \
  --command="mkdir -p ir_jax && tar -xzf ir_jax.tgz -C ir_jax && cd ir_jax && \
    pip install -q -e . 'jax[tpu]==0.10.2' && \
    ir-jax train --config $CONFIG --dry-run --distributed && \
    ir-jax train --config $CONFIG --workdir $WORKDIR --distributed"

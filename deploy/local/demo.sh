#!/usr/bin/env bash
# make demo: embedded broker + Redis + one worker on their own ports, deterministic sample
# data replayed with progress bars, lifecycle changes and a summary printed, then all stopped.
set -euo pipefail
cd "$(dirname "$0")/../.."
PAT=.venv/bin/patronage
export PATRONAGE_RUN_DIR=.run/demo
export KAFKA_PORT=${DEMO_KAFKA_PORT:-19092}
export REDIS_PORT=${DEMO_REDIS_PORT:-16379}
export PATRONAGE_WEB_PORT=${DEMO_WEB_PORT:-16066}
export PATRONAGE_BROKER=kafka://127.0.0.1:$KAFKA_PORT
export PATRONAGE_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0
export PATRONAGE_APP_ID=patronage-demo
CUSTOMERS=${DEMO_CUSTOMERS:-2000}
DATA=.run/demo-data

cleanup() { $PAT local down >/dev/null 2>&1 || true; }
trap cleanup EXIT
$PAT local down >/dev/null 2>&1 || true
rm -rf "$PATRONAGE_RUN_DIR" "$DATA"

echo "== 1/5 starting broker (noida-db :$KAFKA_PORT), Redis (:$REDIS_PORT) and a worker (:$PATRONAGE_WEB_PORT)"
$PAT local up
echo "== 2/5 generating $CUSTOMERS customers (seed 7)"
$PAT generate --customers "$CUSTOMERS" --seed 7 --out "$DATA"
echo "== 3/5 replaying"
for topic in customer-updates touchpoints purchases stock-arrivals; do
  $PAT replay "$DATA/$topic.jsonl" --topic "$topic"
done
echo "== 4/5 waiting for the worker to process everything"
$PAT wait --timeout 240
echo "== 5/5 results"
$PAT tail lifecycle-changes --limit 12
$PAT summary
who=$(.venv/bin/python -c 'import json,sys; print(json.load(open(sys.argv[1]))["lapsing_loyalists"][0])' "$DATA/labels.json")
echo "profile of $who (a loyal customer who has gone quiet, per labels.json):"
$PAT profile "$who"
echo "demo finished; stopping the stack"

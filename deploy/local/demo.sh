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
# replayed history: the event clock (a finished replay stops holding it back after the
# default 5 s of quiet, once everything is read)
export PATRONAGE_CHURN_MODEL_REFRESH_S=${PATRONAGE_CHURN_MODEL_REFRESH_S:-2}
# control groups (off by default in production settings), so the demo can show uplift
export PATRONAGE_CHURN_HOLDOUT=${PATRONAGE_CHURN_HOLDOUT:-0.2}
export PATRONAGE_GATE_HOLDOUT=${PATRONAGE_GATE_HOLDOUT:-new_stock_for_interest=0.2}
# DEMO_KEEP=1: leave the stack running at the end (open the page; the last lines say how to stop it)
KEEP=${DEMO_KEEP:-0}
CUSTOMERS=${DEMO_CUSTOMERS:-2000}
DATA=.run/demo-data

cleanup() { [ "$KEEP" = 1 ] || $PAT local down >/dev/null 2>&1 || true; }
trap cleanup EXIT
$PAT local down >/dev/null 2>&1 || true
rm -rf "$PATRONAGE_RUN_DIR" "$DATA"

echo "== 1/6 starting broker (noida-db :$KAFKA_PORT), Redis (:$REDIS_PORT) and a worker (:$PATRONAGE_WEB_PORT)"
$PAT local up
echo "== 2/6 generating $CUSTOMERS customers over two years (seed 7)"
$PAT generate --customers "$CUSTOMERS" --seed 7 --out "$DATA"
echo "== 3/6 fitting the BG/NBD churn model (P(alive)) and handing it to the worker"
$PAT churn-model fit --events "$DATA/purchases.jsonl" --until 2026-10-31 --publish
sleep 3
echo "== 4/6 replaying all four topics, merged by event time (the event clock ticks through two years)"
$PAT replay "$DATA"
echo "== 5/6 waiting for the worker to process everything"
$PAT wait --timeout 240
sleep 7  # the inputs go idle (5 s), the clock ticks to the end of the data
echo "== 6/6 results"
$PAT tail lifecycle-changes --limit 8
$PAT tail triggers --limit 8
$PAT summary
who=$(.venv/bin/python -c 'import json,sys; print(json.load(open(sys.argv[1]))["lapsing_loyalists"][0])' "$DATA/labels.json")
echo "profile of $who (a loyal customer who has gone quiet, per labels.json):"
$PAT profile "$who"
# a customer told about new stock in their favourite category, and why
pick=$($PAT tail triggers --json --limit 1000000 | .venv/bin/python -c '
import json, sys
found = [t for t in map(json.loads, sys.stdin) if t.get("type") == "new_stock_for_interest" and t.get("deliver")]
if found:
    print(found[0]["customer_id"], found[0]["items"][0]["category"])
')
if [ -n "$pick" ]; then
    set -- $pick
    echo "new stock: why $1 heard about $2 (patronage why $1 $2):"
    $PAT why "$1" "$2"
fi
# what other services read, without Kafka: the Redis projection (README: Redis projection)
echo "Redis (what other services read): redis-cli -p $REDIS_PORT HMGET patronage:v1:profile:$who stage risk tier p_alive home_store interests updated_at"
redis-cli -p "$REDIS_PORT" --no-raw HMGET "patronage:v1:profile:$who" stage risk tier p_alive home_store interests updated_at
store=$(redis-cli -p "$REDIS_PORT" HGET "patronage:v1:profile:$who" home_store)
if [ -n "$store" ]; then
    echo "valued customers slipping away at store $store, newest first: redis-cli -p $REDIS_PORT ZREVRANGE patronage:v1:at_risk:$store 0 4"
    redis-cli -p "$REDIS_PORT" --no-raw ZREVRANGE "patronage:v1:at_risk:$store" 0 4
fi
echo "do the triggers work? treated vs held-out (20 % control groups in this demo), patronage uplift:"
$PAT uplift
page="http://127.0.0.1:$PATRONAGE_WEB_PORT/"
echo "the page for store staff: $page${store:+?store=$store}"
.venv/bin/python - "$page${store:+?store=$store}" <<'PY'
import re, sys, urllib.request
html = urllib.request.urlopen(sys.argv[1], timeout=10).read().decode()
heads = re.findall(r"<h2>(.*?)</h2>", html)
print(f"  {len(html) // 1024} KB of HTML; sections: {', '.join(heads)}")
PY
if [ "$KEEP" = 1 ]; then
    echo "demo finished; the stack keeps running (DEMO_KEEP=1): open $page"
    echo "stop it with: PATRONAGE_RUN_DIR=$PATRONAGE_RUN_DIR $PAT local down"
else
    echo "demo finished; stopping the stack (DEMO_KEEP=1 make demo leaves it running to open the page)"
fi

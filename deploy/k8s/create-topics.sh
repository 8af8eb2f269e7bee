#!/bin/sh
# Create every topic a patronage worker needs (the list of `agents.cli.all_topics`, i.e. schemas.topics.Topic), all with
# PATRONAGE_PARTITIONS partitions, using the Apache Kafka image's kafka-topics.sh. Shared by
# deploy/compose.yaml (service "topics") and the Kubernetes Job "patronage-topics" (kustomize mounts
# this file from a generated ConfigMap). The worker would create missing topics itself; creating
# them here first gives the table changelog and the churn model their compaction and fails before any worker starts.
#
# Idempotent: existing topics are kept. A co-partitioned topic (the customer inputs, the identity
# topic, the table changelog) that exists with another partition count fails the run, because
# keyed per-customer state would be split across workers; other topics only get a warning.
#
# Environment: PATRONAGE_BROKER (kafka://host:port[;kafka://host:port...]), PATRONAGE_PARTITIONS,
# PATRONAGE_REPLICATION_FACTOR, PATRONAGE_TOPIC_PREFIX, PATRONAGE_APP_ID;
# optional KAFKA_COMMAND_CONFIG (client .properties for SASL/TLS), KAFKA_WAIT_S (default 120),
# KAFKA_TOPICS (path of kafka-topics.sh).
# Faust declares its own internal assignor topic at start-up.
set -eu

KAFKA_TOPICS="${KAFKA_TOPICS:-/opt/kafka/bin/kafka-topics.sh}"
PARTITIONS="${PATRONAGE_PARTITIONS:?PATRONAGE_PARTITIONS must be set}"
REPLICATION="${PATRONAGE_REPLICATION_FACTOR:-1}"
PREFIX="${PATRONAGE_TOPIC_PREFIX:-}"
APP_ID="${PATRONAGE_APP_ID:-patronage}"
WAIT_S="${KAFKA_WAIT_S:-120}"
COMMAND_CONFIG="${KAFKA_COMMAND_CONFIG:-}"
# Faust URL form -> bootstrap list: kafka://a:9092;kafka://b:9092 -> a:9092,b:9092
BOOTSTRAP="$(printf '%s' "${PATRONAGE_BROKER:?PATRONAGE_BROKER must be set}" | sed -e 's#kafka://##g' -e 's#;#,#g')"

# Names as schemas.topics.TopicNames builds them (tests/unit/test_deploy_files.py compares them).
IDENTITY="${PREFIX}${APP_ID}-identity"
MODEL="${PREFIX}${APP_ID}-churn-model"
BROADCAST="${PREFIX}${APP_ID}-stock-broadcast"
REGIONS="${PREFIX}${APP_ID}-store-regions"
CHANGELOG="${PREFIX}${APP_ID}-customers-changelog"
TOPICS="${PREFIX}purchases ${PREFIX}touchpoints ${PREFIX}customer-updates ${PREFIX}stock-arrivals"
TOPICS="$TOPICS ${PREFIX}triggers ${PREFIX}lifecycle-changes ${PREFIX}dead-letters $IDENTITY $MODEL $BROADCAST $REGIONS $CHANGELOG"
CO_PARTITIONED="${PREFIX}purchases ${PREFIX}touchpoints ${PREFIX}customer-updates $IDENTITY $BROADCAST $CHANGELOG"

kt() {
    if [ -n "$COMMAND_CONFIG" ]; then
        "$KAFKA_TOPICS" --bootstrap-server "$BOOTSTRAP" --command-config "$COMMAND_CONFIG" "$@"
    else
        "$KAFKA_TOPICS" --bootstrap-server "$BOOTSTRAP" "$@"
    fi
}

echo "waiting up to ${WAIT_S}s for Kafka at ${BOOTSTRAP}"
deadline=$(( $(date +%s) + WAIT_S ))
until kt --list >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
        echo "error: Kafka at ${BOOTSTRAP} not reachable after ${WAIT_S}s" >&2
        exit 1
    fi
    sleep 2
done

failed=0
for topic in $TOPICS; do
    if [ "$topic" = "$CHANGELOG" ] || [ "$topic" = "$MODEL" ] || [ "$topic" = "$REGIONS" ]; then
        # customer state / model parameters / store regions: keep the latest record per key forever
        kt --create --if-not-exists --topic "$topic" \
            --partitions "$PARTITIONS" --replication-factor "$REPLICATION" --config cleanup.policy=compact
    else
        kt --create --if-not-exists --topic "$topic" \
            --partitions "$PARTITIONS" --replication-factor "$REPLICATION"
    fi
    actual="$(kt --describe --topic "$topic" | sed -n 's/.*PartitionCount: *\([0-9][0-9]*\).*/\1/p' | head -n 1)"
    if [ "$actual" = "$PARTITIONS" ]; then
        echo "ok: ${topic} (${PARTITIONS} partitions, replication ${REPLICATION})"
        continue
    fi
    case " $CO_PARTITIONED " in
        *" $topic "*)
            echo "error: topic ${topic} has ${actual:-unknown} partitions, expected ${PARTITIONS} (co-partitioned)" >&2
            failed=1
            ;;
        *)
            echo "warning: topic ${topic} has ${actual:-unknown} partitions (PATRONAGE_PARTITIONS=${PARTITIONS})" >&2
            ;;
    esac
done
exit "$failed"

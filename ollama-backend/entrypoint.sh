#!/usr/bin/env bash
# Ollama opens its port at once and loads the weights on the first request, so Cloud Run's TCP
# startup probe would pass while the model is still on its way to the GPU. Serve privately, load the
# model, and only then open the public address (OLLAMA_HOST) to traffic.
set -euo pipefail

public="${OLLAMA_HOST:-0.0.0.0:8080}"
public_port="${PORT:-${public##*:}}"
private="127.0.0.1:11434"

OLLAMA_HOST="$private" ollama serve &
ollama_pid=$!
trap 'kill -TERM "$ollama_pid" 2>/dev/null' TERM INT

until curl -sf "http://$private/" >/dev/null; do
  kill -0 "$ollama_pid" 2>/dev/null || { echo "ollama serve exited during start-up" >&2; exit 1; }
  sleep 0.5
done

# An empty prompt only loads the model (done_reason "load"); keep_alive -1 keeps it loaded.
curl -sf "http://$private/api/generate" \
  -d "{\"model\": \"${MODEL}\", \"keep_alive\": -1}" >/dev/null
echo "model ${MODEL} loaded; accepting traffic on port ${public_port}"

socat "TCP-LISTEN:${public_port},fork,reuseaddr,backlog=256" "TCP:${private}" &
socat_pid=$!
trap 'kill -TERM "$ollama_pid" "$socat_pid" 2>/dev/null' TERM INT

# Whichever stops first stops the container, so Cloud Run replaces the instance.
wait -n "$ollama_pid" "$socat_pid"
status=$?
kill -TERM "$ollama_pid" "$socat_pid" 2>/dev/null || true
exit "$status"

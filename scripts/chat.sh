#!/usr/bin/env bash
# Builds the TypeScript client and its chat page (web/, into build/web) and serves the page:
#   scripts/chat.sh [PORT]       (default 8000; then open http://127.0.0.1:PORT/)
# The page connects to ws://<its host>:7780/v1/link, a broker started by scripts/run.sh;
# ?broker=ws://HOST:PORT/v1/link picks another one.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
bash tests/web/web.sh build build/web >&2
exec node build/web/dist/chat/serve.js --port "${1:-8000}"

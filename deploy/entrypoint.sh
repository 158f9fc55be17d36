#!/bin/sh
# Pulls the models named in $SEMBASE_PULL into the store (a no-op for those
# already there, e.g. mounted at $SEMBASE_HOME/models), then runs sembase.
set -eu
for model in ${SEMBASE_PULL:-}; do
  sembase model pull "$model" >/dev/null
done
exec sembase "$@"

#!/usr/bin/env bash
# Run GPU work longer than one device call allows, on a lent machine whose calls last at most 10
# minutes: `start` copies the tree to /root/detached/src and runs PLAN there in the background,
# detached from the call; `wait SECONDS` (the next calls) waits for it and copies its results
# into $OUT (progress.txt, session.log and results.tgz: unpack with `tar xzf`). Learned on the H200
# of 2026-12-01:
# - the machine is given back 30 s after a call returns, so the next `wait` must come at once;
# - each call empties $OUT (/root/out there) and replaces the working tree, so the run keeps its
#   own copy of the tree and writes under /root/detached, never into $OUT.
#
#   bash benchmarks/gpu_detached.sh start "SUITE_PARTS=e2e E2E_CELLS='one/fast/images bench'" "SUITE_PARTS=tests"
#   bash benchmarks/gpu_detached.sh wait 560
#
# Each PLAN argument is one benchmarks/gpu_suite.sh run, its environment assignments as written.
set -u
HOME_DIR=${DETACHED_DIR:-/root/detached}
case "${1:-}" in
  start)
    shift
    rm -rf "$HOME_DIR" && mkdir -p "$HOME_DIR/src" "$HOME_DIR/out"
    cp -a . "$HOME_DIR/src/"
    {
      echo "cd $HOME_DIR/src"
      for plan in "$@"; do
        echo "echo \"start: $plan \$(date -u +%T)\" >> $HOME_DIR/out/progress.txt"
        echo "env OUT=$HOME_DIR/out $plan bash benchmarks/gpu_suite.sh >> $HOME_DIR/out/session.log 2>&1"
      done
      echo "touch $HOME_DIR/out/DONE"
    } > "$HOME_DIR/plan.sh"
    setsid nohup bash "$HOME_DIR/plan.sh" > "$HOME_DIR/runner.log" 2>&1 < /dev/null &
    echo "started: $# suite runs; logs in $HOME_DIR/out" ;;
  wait)
    for _ in $(seq "${2:-560}"); do [ -f "$HOME_DIR/out/DONE" ] && break; sleep 1; done
    # At most 8 files come back from a call, 16 MiB each, no deeper than $OUT/a/b: the progress,
    # the session log and one archive of everything else (files under 8 MiB; the logs and tables).
    if [ -n "${OUT:-}" ] && [ "$OUT" != "$HOME_DIR/out" ]; then
      cp "$HOME_DIR/out/progress.txt" "$HOME_DIR/out/session.log" "$OUT/" 2>/dev/null
      (cd "$HOME_DIR/out" && find . -type f -size -8M ! -name session.log ! -name progress.txt -print0 |
        tar czf "$OUT/results.tgz" --null -T -)
    fi
    cat "$HOME_DIR/out/progress.txt"
    [ -f "$HOME_DIR/out/DONE" ] && echo "DONE" || echo "still running"
    grep -E "^\[|^==|passed|failed" "$HOME_DIR/out/session.log" | tail -40 ;;
  *)
    echo "usage: $0 start PLAN... | wait SECONDS" >&2; exit 2 ;;
esac

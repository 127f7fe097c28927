# shellcheck shell=bash
# Process helpers the test scripts share (sourced; defines functions only).

# descendants PID: the processes below PID, each on its own line, children
# before their own children (from /proc: procps may be absent).
descendants() {
  local f line st kids=()
  for f in /proc/[0-9]*/stat; do
    read -r line 2>/dev/null <"$f" || continue
    st=(${line##*) })   # fields after "(comm) ": state ppid ...
    [ "${st[1]:-}" = "$1" ] || continue
    f="${f#/proc/}"; kids+=("${f%/stat}")
  done
  for f in "${kids[@]}"; do echo "$f"; descendants "$f"; done
}

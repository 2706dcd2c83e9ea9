#!/usr/bin/env bash
# make molecule: run Molecule scenarios, MOLECULE_LANES at a time (make passes 2). Each scenario has its own
# containers, network and Molecule state; its output goes to .build/molecule/<scenario>.log and is printed
# in one piece when it ends. Scenarios are started in the order given (make passes the longest first).
# The name `demo` runs the README's `make demo` (its own three containers) as one of them.
#   tests/testbed/molecule.sh SCENARIO...
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
logs=$root/.build/molecule
mkdir -p "$logs"
[ $# -gt 0 ] || { echo "FAILED: no Molecule scenario given" >&2; exit 1; }

# The images first, one at a time (debootstrap): each scenario names its release in molecule.yml.
files=()
for s in "$@"; do [ "$s" = demo ] || files+=("$root/molecule/$s/molecule.yml"); done
sed -n 's|.*image: localhost/grus-backup-\([a-z]*\):.*|\1|p' "${files[@]}" | sort -u | while read -r suite; do
  "$here/testbed.sh" image "$suite"
done

one() {
  local s=$1 log=$logs/$1.log start rc=0
  start=$(date +%s)
  echo "molecule: scenario $s started ($(date +%T)); its output: $log"
  if [ "$s" = demo ]; then
    make --no-print-directory -C "$root" demo > "$log" 2>&1 || rc=$?
  else
    molecule test -s "$s" > "$log" 2>&1 || rc=$?
    [ $rc = 0 ] || molecule destroy -s "$s" >> "$log" 2>&1 || true
  fi
  {
    flock 9
    cat "$log"
    if [ $rc = 0 ]; then echo "molecule: scenario $s passed in $(( $(date +%s) - start )) s"
    else echo "molecule: scenario $s FAILED (rc $rc) after $(( $(date +%s) - start )) s"; fi
  } 9> "$logs/.print.lock"
  return $rc
}
export -f one
export logs root

start=$(date +%s)
rc=0
# shellcheck disable=SC2016  # $1 is the inner shell's
printf '%s\n' "$@" | xargs -P "${MOLECULE_LANES:-2}" -I{} bash -c 'one "$1"' _ {} || rc=$?
echo "molecule: $# scenarios, ${MOLECULE_LANES:-2} at a time, in $(( $(date +%s) - start )) s"
[ $rc = 0 ] || { echo "FAILED: a Molecule scenario failed (see above)" >&2; exit 1; }

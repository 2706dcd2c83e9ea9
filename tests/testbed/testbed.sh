#!/usr/bin/env bash
# The container test bed: engine, cached Debian images, demo hosts.
#
#   testbed.sh engine            make a Docker-compatible API answer; prints `export DOCKER_HOST=...`
#   testbed.sh image [SUITE]     build (or reuse) the test image for SUITE (trixie|bookworm)
#   testbed.sh demo-up           start sarus, antigone, balearica on network grus-demo
#   testbed.sh demo-down         remove the demo containers, network and volumes
#   testbed.sh clean             demo-down + remove every container of our images and every
#                                network/volume we label
#
# Safe to re-run. Everything we create carries the label grus.backup.testbed=1 so that
# clean-up never touches anything else on the machine.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
state=${GRUS_TESTBED_STATE:-$root/.build/testbed}
mkdir -p "$state"
LABEL=grus.backup.testbed=1
SOCKET=/run/podman/podman.sock
DEMO_NET=grus-demo
DEMO_HOSTS=(sarus antigone balearica)
MIRROR=${GRUS_DEBIAN_MIRROR:-http://deb.debian.org/debian}

log() { printf 'testbed: %s\n' "$*" >&2; }

# --- engine -------------------------------------------------------------------------

# Our podman settings live in our own file, handed to podman through CONTAINERS_CONF,
# so an existing /etc/containers/containers.conf is never rewritten.
containers_conf() {
  local conf=$state/containers.conf
  cat > "$conf.new" <<'EOF'
# Written by grus.backup's tests/testbed/testbed.sh (see ../shared/TESTBED.md):
# the VMs lack CAP_SYS_RESOURCE, so default rlimits are lowered, and on their
# cgroup v1/v2 hybrid crun fails where runc + cgroupfs works.
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
events_logger = "file"
EOF
  mv "$conf.new" "$conf"
  if [ -f /etc/containers/containers.conf ]; then
    log "leaving /etc/containers/containers.conf as it is; podman here uses $conf (CONTAINERS_CONF)"
  fi
  export CONTAINERS_CONF=$conf
}

docker_answers() {
  command -v docker >/dev/null 2>&1 && timeout 10 docker info >/dev/null 2>&1
}

# A podman service left by another checkout that has since been removed (its working directory or
# its CONTAINERS_CONF file gone) starts no container any more ("conmon: Failed to get working
# directory"): stop it, so that engine() starts a healthy one.
stop_stale_service() {
  local pid cwd conf
  for pid in $(pgrep -f "podman system service --time=0 unix://$SOCKET" || true); do
    cwd=$(readlink "/proc/$pid/cwd" 2>/dev/null || true)
    conf=$(tr '\0' '\n' < "/proc/$pid/environ" 2>/dev/null | sed -n 's/^CONTAINERS_CONF=//p')
    if [[ "$cwd" == *" (deleted)" ]] || { [ -n "$conf" ] && [ ! -f "$conf" ]; }; then
      log "stopping a stale podman API service (pid $pid: working directory ${cwd:-?}, CONTAINERS_CONF ${conf:-unset})"
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
  done
}

engine() {
  if [ -z "${DOCKER_HOST:-}" ] && [ -S /var/run/docker.sock ] && docker_answers; then
    log "using the Docker engine that answers at /var/run/docker.sock"
    echo "export GRUS_ENGINE=docker"
    return
  fi
  command -v podman >/dev/null || "$here/host-deps.sh"
  containers_conf
  stop_stale_service
  if ! curl -sf --unix-socket "$SOCKET" http://d/_ping >/dev/null 2>&1; then
    mkdir -p "$(dirname "$SOCKET")"
    log "starting podman's Docker-compatible API on unix://$SOCKET"
    # From /: conmon inherits the service's working directory, and a checkout that is later
    # removed (a CI clone) would leave a service whose every container start fails.
    # Without the caller's other open files: a service that inherited, say, the lock of a `flock ... make
    # molecule` would hold that lock for as long as it runs (seen: every later flock waited forever).
    (
      for fd in "/proc/$BASHPID/fd/"*; do fd=${fd##*/}; [ "$fd" -gt 2 ] && eval "exec $fd>&-"; done
      exec setsid nohup env --chdir=/ CONTAINERS_CONF="$CONTAINERS_CONF" podman system service --time=0 "unix://$SOCKET" \
        > "$state/podman-service.log" 2>&1 < /dev/null
    ) &
    echo $! > "$state/podman-service.pid"
    for _ in $(seq 1 100); do
      curl -sf --unix-socket "$SOCKET" http://d/_ping >/dev/null 2>&1 && break
      sleep 0.1
    done
    curl -sf --unix-socket "$SOCKET" http://d/_ping >/dev/null || { log "podman API did not start"; cat "$state/podman-service.log" >&2; exit 1; }
  fi
  echo "export GRUS_ENGINE=podman CONTAINERS_CONF=$CONTAINERS_CONF DOCKER_HOST=unix://$SOCKET"
}

# --- images -------------------------------------------------------------------------

# Packages every test host gets (borg: see image() below).
image_packages() {
  # python3-prometheus-client: the jobs write their metrics with it (the roles install it; a check run cannot).
  echo "python3,python3-apt,python3-prometheus-client,openssh-server,openssh-client,rsync,systemd,systemd-sysv,dbus,acl,attr,procps,iproute2,ca-certificates,sudo,less,gnupg"
}

image_recipe() {
  local suite=$1
  {
    echo "suite=$suite mirror=$MIRROR packages=$(image_packages)"
    sed -n '/^# --- images/,/^# --- demo/p' "$0"
  } | sha256sum | cut -c1-16
}

image_name() { echo "localhost/grus-backup-$1:latest"; }

podman_or_docker() {
  if [ "${GRUS_ENGINE:-podman}" = docker ]; then docker "$@"; else podman "$@"; fi
}

image() {
  local suite=${1:-trixie}
  local name recipe have
  eval "$(engine)"
  name=$(image_name "$suite")
  recipe=$(image_recipe "$suite")
  have=$(podman_or_docker image inspect --format '{{ index .Config.Labels "grus.recipe" }}' "$name" 2>/dev/null || true)
  if [ "$have" = "$recipe" ]; then
    log "image $name is current (recipe $recipe)"
    return
  fi
  command -v debootstrap >/dev/null || "$here/host-deps.sh"
  local dir=$state/rootfs-$suite
  rm -rf "$dir"
  log "building $name with debootstrap ($suite, recipe $recipe); about a minute"
  debootstrap --variant=minbase --include="$(image_packages)" "$suite" "$dir" "$MIRROR" > "$state/debootstrap-$suite.log" 2>&1 \
    || { tail -n 30 "$state/debootstrap-$suite.log" >&2; exit 1; }
  # trixie: the distribution's borg, in the image (the roles find it and install nothing). bookworm: no borg,
  # so that the roles' own install runs for real: bookworm-backports, which they add (molecule full on
  # bookworm), or the pip method (molecule key_holder).
  if [ "$suite" != bookworm ]; then
    DEBIAN_FRONTEND=noninteractive chroot "$dir" apt-get install -y -qq borgbackup >/dev/null
  fi
  # Every container must get its own SSH host keys: drop the image's, make them at boot.
  rm -f "$dir"/etc/ssh/ssh_host_*
  mkdir -p "$dir/etc/systemd/system/ssh.service.d"
  printf '[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\nExecStartPre=/usr/sbin/sshd -t\n' \
    > "$dir/etc/systemd/system/ssh.service.d/host-keys.conf"
  # Units that cannot work in a container.
  for unit in systemd-remount-fs.service getty@tty1.service console-getty.service \
              systemd-udevd.service systemd-udev-trigger.service; do
    ln -sf /dev/null "$dir/etc/systemd/system/$unit"
  done
  : > "$dir/etc/machine-id"
  chroot "$dir" apt-get clean
  rm -rf "$dir"/var/lib/apt/lists/*
  tar -C "$dir" -c . | podman_or_docker import \
    --change "LABEL grus.recipe=$recipe" --change "LABEL $LABEL" \
    --change 'CMD ["/sbin/init"]' --change "STOPSIGNAL SIGRTMIN+3" - "$name" >/dev/null
  rm -rf "$dir"
  log "image $name built"
}

# --- demo ---------------------------------------------------------------------------

demo_up() {
  local suite=${GRUS_DEMO_SUITE:-trixie}
  eval "$(engine)"
  image "$suite"
  podman_or_docker network inspect "$DEMO_NET" >/dev/null 2>&1 \
    || podman_or_docker network create --label "$LABEL" "$DEMO_NET" >/dev/null
  for h in "${DEMO_HOSTS[@]}"; do
    if podman_or_docker container inspect "$h" >/dev/null 2>&1; then
      podman_or_docker start "$h" >/dev/null
      continue
    fi
    podman_or_docker run -d --name "$h" --hostname "$h" --network "$DEMO_NET" --label "$LABEL" \
      --cap-add SYS_ADMIN --cap-add NET_ADMIN \
      --tmpfs /run --tmpfs /tmp "$(image_name "$suite")" /sbin/init >/dev/null
  done
  for h in "${DEMO_HOSTS[@]}"; do
    for _ in $(seq 1 120); do
      state_now=$(podman_or_docker exec "$h" systemctl is-system-running 2>/dev/null || true)
      case $state_now in running|degraded) break ;; esac
      sleep 0.5
    done
    log "$h is up (systemd: $state_now)"
  done
}

demo_down() {
  eval "$(engine)"
  for h in "${DEMO_HOSTS[@]}"; do
    podman_or_docker rm -f -v "$h" >/dev/null 2>&1 || true
  done
  podman_or_docker network rm "$DEMO_NET" >/dev/null 2>&1 || true
}

clean() {
  demo_down
  eval "$(engine)"
  local ids
  # Ours: labelled by us, or started from our images (Molecule names its own containers).
  mapfile -t ids < <({ podman_or_docker ps -aq --filter "label=$LABEL"
                       for suite in trixie bookworm; do
                         podman_or_docker ps -aq --filter "ancestor=$(image_name "$suite")"
                       done; } 2>/dev/null | sort -u)
  [ ${#ids[@]} -eq 0 ] || podman_or_docker rm -f -v "${ids[@]}" >/dev/null
  mapfile -t ids < <(podman_or_docker network ls -q --filter "label=$LABEL" || true)
  [ ${#ids[@]} -eq 0 ] || podman_or_docker network rm "${ids[@]}" >/dev/null
  mapfile -t ids < <(podman_or_docker volume ls -q --filter "label=$LABEL" || true)
  [ ${#ids[@]} -eq 0 ] || podman_or_docker volume rm "${ids[@]}" >/dev/null
  log "no labelled container, network or volume left"
}

case ${1:-} in
  engine) engine ;;
  image) image "${2:-trixie}" ;;
  demo-up) demo_up ;;
  demo-down) demo_down ;;
  clean) clean ;;
  *) sed -n '2,13p' "$0"; exit 2 ;;
esac

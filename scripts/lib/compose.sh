# shellcheck shell=bash
# What the compose scripts share (sourced by scripts/compose-test.sh):
#   compose ARGS...          docker compose (v2 plugin) or docker-compose (v1), on compose.yml and
#                            the files in COMPOSE_FILES (space-separated)
#   clog MESSAGE             a line on stderr with the seconds since the script started
#   wait_until SECS WHAT CMD...   runs CMD every half second until it succeeds; fails after SECS
#   healthy SERVICE          every container of SERVICE reports healthy
#   published SERVICE PORT   the host address:port a service's container port is published on
#   containers [SERVICE]     ids of the project's containers (of one service), stopped ones too
#   check_stopped_cleanly    every container of the project exited 0 or 143 (SIGTERM), none 137
#   dataset_sample DIR N     N images per class of the validation split, copied to DIR/<class>/

if docker compose version >/dev/null 2>&1; then
  COMPOSE=(docker compose)
else
  COMPOSE=(docker-compose)
fi
PROJECT="${COMPOSE_PROJECT_NAME:-clothesline}"

compose() {
  local files=(-f compose.yml) f
  for f in ${COMPOSE_FILES:-}; do files+=(-f "$f"); done
  "${COMPOSE[@]}" -p "$PROJECT" "${files[@]}" "$@"
}

clog() { printf '\033[1;36m[compose +%ds]\033[0m %s\n' "$SECONDS" "$*" >&2; }

wait_until() {
  local secs="$1" what="$2" deadline
  shift 2
  deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      clog "gave up after ${secs}s waiting for $what"
      return 1
    fi
    sleep 0.5
  done
}

containers() {
  docker ps -aq --filter "label=com.docker.compose.project=$PROJECT" \
    ${1:+--filter "label=com.docker.compose.service=$1"}
}

published() { docker port "$(containers "$1" | sed -n 1p)" "$2/tcp" | grep '^127.0.0.1:\|^0.0.0.0:' | sed -n "s/^0.0.0.0:/127.0.0.1:/; 1p"; }

healthy() {
  local ids id
  ids="$(containers "$1")"
  [ -n "$ids" ] || return 1
  for id in $ids; do
    [ "$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$id")" = healthy ] || return 1
  done
}

# After `compose stop`: exit code 0 (a clean exit on SIGTERM) or 143 (128 + SIGTERM: a process
# that died of the signal itself); 137 is SIGKILL, what Docker sends after the grace period.
check_stopped_cleanly() {
  local bad=0 id line
  for id in $(containers); do
    line="$(docker inspect -f '{{.Name}} running={{.State.Running}} exit={{.State.ExitCode}} oom={{.State.OOMKilled}}' "$id")"
    case "$line" in
      *running=false\ exit=0\ * | *running=false\ exit=143\ *) clog "stopped: $line" ;;
      *) clog "NOT STOPPED CLEANLY: $line"; bad=1 ;;
    esac
  done
  return "$bad"
}

dataset_sample() {
  local dir="$1" n="$2" dataset class
  dataset="${CLOTHESLINE_DATASET:-../shared/datasets/clothing-dataset-small}/validation"
  [ -d "$dataset" ] || { clog "no dataset at $dataset (set CLOTHESLINE_DATASET)"; return 1; }
  for class in "$dataset"/*/; do
    class="$(basename "$class")"
    mkdir -p "$dir/$class"
    find "$dataset/$class" -maxdepth 1 -name '*.jpg' | sort | sed -n "1,${n}p" | xargs -r cp -t "$dir/$class"
  done
}

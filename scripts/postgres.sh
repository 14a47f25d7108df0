#!/usr/bin/env bash
# Install (Debian's `postgresql` package) and start a local PostgreSQL for the tests, create the user
# and database `medserve` (password `medserve`), wait until it accepts connections, and print its URL:
#
#   export MEDSERVE_TEST_POSTGRES_URL="$(bash scripts/postgres.sh)"
#
# Runs as root (or with passwordless sudo); safe to run again. Progress goes to stderr, the URL to stdout.
set -euo pipefail

NAME=medserve
PASSWORD=medserve

say() { echo "postgres.sh: $*" >&2; }

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
    as_postgres() { runuser -u postgres -- "$@"; }
else
    SUDO=(sudo -n)
    as_postgres() { sudo -n -u postgres -- "$@"; }
fi

have_server() {
    command -v pg_lsclusters >/dev/null 2>&1 && compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null
}

if ! have_server; then
    say "installing postgresql with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -qq >&2
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends postgresql >&2
fi

# The package creates the cluster "main" of its newest version unless the system says otherwise.
read -r VERSION CLUSTER PORT < <(pg_lsclusters --no-header | awk 'NR == 1 {print $1, $2, $3}') || true
if [ -z "${VERSION:-}" ]; then
    VERSION="$(basename "$(compgen -G "/usr/lib/postgresql/*/bin/postgres" | sort -V | tail -n 1 | xargs dirname | xargs dirname)")"
    CLUSTER=main
    say "creating cluster $VERSION/$CLUSTER"
    "${SUDO[@]}" pg_createcluster "$VERSION" "$CLUSTER" >&2
    PORT="$(pg_lsclusters --no-header "$VERSION" "$CLUSTER" | awk '{print $3}')"
fi

if ! "${SUDO[@]}" pg_ctlcluster "$VERSION" "$CLUSTER" status >/dev/null 2>&1; then
    say "starting cluster $VERSION/$CLUSTER on port $PORT"
    "${SUDO[@]}" pg_ctlcluster "$VERSION" "$CLUSTER" start >&2
fi

for _ in $(seq 1 120); do
    if pg_isready -q -h 127.0.0.1 -p "$PORT" -t 1; then
        break
    fi
    sleep 0.5
done
if ! pg_isready -q -h 127.0.0.1 -p "$PORT" -t 1; then
    say "PostgreSQL does not accept connections on 127.0.0.1:$PORT"
    exit 1
fi

as_postgres psql -q -v ON_ERROR_STOP=1 -p "$PORT" -d postgres >&2 <<SQL
DO \$\$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$NAME') THEN
        CREATE ROLE $NAME LOGIN PASSWORD '$PASSWORD';
    ELSE
        ALTER ROLE $NAME LOGIN PASSWORD '$PASSWORD';
    END IF;
END
\$\$;
SQL
if [ "$(as_postgres psql -tA -p "$PORT" -d postgres -c "SELECT 1 FROM pg_database WHERE datname = '$NAME'")" != 1 ]; then
    as_postgres createdb -p "$PORT" -O "$NAME" "$NAME" >&2
fi

# The tests connect over TCP with the password; check exactly that before handing out the URL.
PGPASSWORD="$PASSWORD" psql -q -h 127.0.0.1 -p "$PORT" -U "$NAME" -d "$NAME" -c "SELECT 1" >/dev/null
echo "postgresql+psycopg://$NAME:$PASSWORD@127.0.0.1:$PORT/$NAME"

# vpgrid's Ray Job entrypoint: `sh job_driver.sh ARGS...` runs `python -m orchestrator.cli ARGS...` with the
# interpreter this node's Ray starts its Python workers with, whatever the head's PATH holds. A head started from
# a virtual environment's `ray` without activating it has another `python` (or none) on its PATH.
#
# The job's supervisor is a Ray worker, a child of the raylet; the raylet's command line names that interpreter
# (--python_worker_command=PYTHON ...). Walk up from this shell to it; without /proc or a raylet above (not a Ray
# Job), fall back to python3 / python on the PATH.
py=""
pid=$$
for _ in 1 2 3 4 5 6 7 8; do
    [ -r "/proc/$pid/stat" ] || break
    # field 4 of /proc/PID/stat is the parent; the command name before it is in parentheses and may hold spaces
    pid=$(sed 's/.*) //' "/proc/$pid/stat" | cut -d' ' -f2)
    [ -n "$pid" ] && [ "$pid" -gt 1 ] 2>/dev/null || break
    py=$(tr '\0' '\n' < "/proc/$pid/cmdline" 2>/dev/null | sed -n 's/^--python_worker_command=\([^ ]*\).*/\1/p' | head -n 1)
    [ -n "$py" ] && break
done
if [ -z "$py" ] || [ ! -x "$py" ]; then
    py=$(command -v python3 || command -v python)
fi
if [ -z "$py" ]; then
    echo "error: vpgrid's job driver found no Python: no raylet above it and no python3 on PATH=$PATH" >&2
    exit 127
fi
exec "$py" -m orchestrator.cli "$@"

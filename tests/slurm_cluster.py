"""A real SLURM on loopback for the cluster tests (`make test-slurm`): this host as node of
the default partition `debug`, and two more nodes, `rrtn1` and `rrtn2` (one CPU each), as
partition `two` for the several-node tests.

The two extra nodes are further slurmd daemons on this host (`slurmd -N rrtn1`): declared
with this host's name as NodeHostname, NodeAddr=127.0.0.1 and a port of their own, with
per-node spool, pid and log files (`%n`). A two-node job's torchrun rendezvous connects to
its first node by name, so the names go into /etc/hosts (127.0.0.1) while the cluster runs,
as one marked line that `stop` removes again (the file is left as it was).

Debian's slurm-wlm 22.05 and munge: munged runs as the `munge` user with its socket in a
private directory, slurmctld and slurmd in the foreground as children of this process, so
they are stopped by PID (never by name: a real cluster's daemons are left alone). No
accounting database: the Snakemake profile polls with squeue, which needs SLURM's
MinJobAge well above the plugin's first status delay (set here to 900 s).

The config must be /etc/slurm/slurm.conf: the Snakemake SLURM plugin removes SLURM_CONF
(every SLURM_* variable) before the srun inside a job. An existing file that this module
did not write is never overwritten.

    python tests/slurm_cluster.py up     # start, print the state dir, leave it running
    python tests/slurm_cluster.py down   # stop what `up` started
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONF = Path("/etc/slurm/slurm.conf")
MARK = "# written by rrt tests/slurm_cluster.py"
STATE_FILE = Path(tempfile.gettempdir()) / "rrt-slurm-cluster"  # the state dir of `up`
DAEMONS = ("munged", "slurmctld", "slurmd")  # started in this order, stopped in reverse
EXTRA_NODES = ("rrtn1", "rrtn2")  # partition `two`
HOSTS = Path("/etc/hosts")
HOSTS_LINE = f"127.0.0.1 {' '.join(EXTRA_NODES)}  {MARK}\n"
SLURMD_PORT = 6818  # SLURM's default; the extra nodes take the next ones


def missing() -> str | None:
    """Why a cluster cannot be started here, or None."""
    if os.geteuid() != 0:
        return "needs root (munged and slurmd run as system users)"
    absent = [t for t in ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "setpriv") if shutil.which(t) is None]
    if absent:
        return f"{', '.join(absent)} not installed (apt-get install slurm-wlm munge)"
    if CONF.exists() and MARK not in CONF.read_text():
        return f"{CONF} exists and was not written by these tests: not touching a real cluster"
    return None


def _free_memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def slurm_conf(state: Path, node: str, cpus: int, memory_mb: int) -> str:
    """This host as the node of partition `debug` (all its CPUs), and EXTRA_NODES as partition
    `two` (one CPU and a share of the memory each: the same cores, used by one test at a time)."""
    extra = "".join(f"NodeName={name} NodeHostname={node} NodeAddr=127.0.0.1 Port={SLURMD_PORT + 1 + i} CPUs=1 "
                    f"RealMemory={max(1000, memory_mb // len(EXTRA_NODES))} State=UNKNOWN\n"
                    for i, name in enumerate(EXTRA_NODES))
    return f"""{MARK}
ClusterName=rrttest
SlurmctldHost={node}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket={state}/munge/munge.socket
StateSaveLocation={state}/ctld
SlurmdSpoolDir={state}/spool/%n
SlurmctldPidFile={state}/slurmctld.pid
SlurmdPidFile={state}/slurmd.%n.pid
SlurmctldLogFile={state}/slurmctld.log
SlurmdLogFile={state}/slurmd.%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MailProg=/bin/true
MinJobAge=900
ReturnToService=2
SchedulerParameters=sched_interval=2
NodeName={node} NodeAddr=127.0.0.1 Port={SLURMD_PORT} CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
{extra}PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
PartitionName=two Nodes={",".join(EXTRA_NODES)} MaxTime=INFINITE State=UP
"""


class LocalSlurm:
    def __init__(self, state: Path):
        self.state = Path(state)
        self.procs: dict[str, subprocess.Popen] = {}
        self.node = socket.gethostname().split(".")[0]

    def start(self, timeout: float = 90) -> "LocalSlurm":
        why = missing()
        if why:
            raise RuntimeError(f"cannot start a local SLURM: {why}")
        self.state.mkdir(parents=True, exist_ok=True)
        self.state.chmod(0o755)  # munged runs as `munge` and must reach its directory
        (self.state / "ctld").mkdir(exist_ok=True)
        for name in (self.node, *EXTRA_NODES):
            (self.state / "spool" / name).mkdir(parents=True, exist_ok=True)
        munge_dir = self.state / "munge"
        munge_dir.mkdir(exist_ok=True)
        shutil.chown(munge_dir, "munge", "munge")
        munge_dir.chmod(0o755)  # clients (root, slurmd) must reach the socket
        CONF.parent.mkdir(parents=True, exist_ok=True)
        cpus = os.cpu_count() or 1
        CONF.write_text(slurm_conf(self.state, self.node, cpus, max(1000, _free_memory_mb() - 2000)))
        self._spawn("munged", ["setpriv", "--reuid", "munge", "--regid", "munge", "--init-groups", "munged",
                               "--foreground", f"--socket={munge_dir}/munge.socket",
                               f"--pid-file={munge_dir}/munged.pid", f"--log-file={munge_dir}/munged.log",
                               f"--seed-file={munge_dir}/munged.seed"])
        self._wait(lambda: (munge_dir / "munge.socket").exists(), 20, "munged's socket")
        add_hosts_line(self.state / "hosts.added")  # before slurmctld: it looks the node names up
        self._spawn("slurmctld", ["slurmctld", "-D", "-c", "-i"])
        self._spawn("slurmd", ["slurmd", "-D", "-N", self.node])
        for name in EXTRA_NODES:
            self._spawn(f"slurmd-{name}", ["slurmd", "-D", "-N", name])
        self._wait(self._idle, timeout, "every node to be idle in sinfo")
        return self

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.state / f"{name}.out", "wb")
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        (self.state / f"{name}.child.pid").write_text(str(self.procs[name].pid))

    def _idle(self) -> bool:
        r = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True)
        state = dict(line.split() for line in r.stdout.splitlines())
        return (r.returncode == 0 and set(state) == {self.node, *EXTRA_NODES}
                and all(s in ("idle", "mixed") for s in state.values()))

    def _wait(self, ready, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited ({p.returncode}); see {self.state}/{name}.out")
            if ready():
                return
            time.sleep(0.5)
        raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}; logs in {self.state}")

    def stop(self) -> None:
        """Cancel what is left, stop the daemons by PID (slurmd and slurmctld, then munged;
        from their pid files when this object did not start them) and remove the config
        and the hosts line this module wrote."""
        if (self.state / "slurmctld.child.pid").exists():
            subprocess.run(["scancel", "--full", "-u", "root"], capture_output=True)
        for name in [f"slurmd-{n}" for n in EXTRA_NODES] + list(reversed(DAEMONS)):
            stop_pid(self.procs.get(name), self.state / f"{name}.child.pid")
        if CONF.exists() and MARK in CONF.read_text():
            CONF.unlink()
        remove_hosts_line(self.state / "hosts.added")


def add_hosts_line(record: Path) -> None:
    """Append HOSTS_LINE to /etc/hosts (in place: in a container the file may be a mount),
    and what was appended to `record`."""
    text = HOSTS.read_text()
    if HOSTS_LINE in text:
        return
    added = ("" if text.endswith("\n") or not text else "\n") + HOSTS_LINE
    record.write_text(added)
    with open(HOSTS, "a") as f:
        f.write(added)


def remove_hosts_line(record: Path) -> None:
    """Remove what add_hosts_line appended (`record`), every other byte left as it was."""
    if not record.exists():
        return
    added, text = record.read_text(), HOSTS.read_text()
    if added in text:
        i = text.rindex(added)
        with open(HOSTS, "r+") as f:
            f.write(text[:i] + text[i + len(added):])
            f.truncate()
    record.unlink()


def stop_pid(proc: subprocess.Popen | None, pid_file: Path) -> None:
    pid = proc.pid if proc is not None else (int(pid_file.read_text()) if pid_file.exists() else None)
    if pid is None:
        return
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        end = time.monotonic() + wait
        while time.monotonic() < end:
            try:
                if proc is not None:
                    if proc.poll() is not None:
                        break
                else:
                    os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            continue
        break
    pid_file.unlink(missing_ok=True)


def _main(argv: list[str]) -> int:
    if argv == ["up"]:
        state = Path(tempfile.mkdtemp(prefix="rrt-slurm-"))
        LocalSlurm(state).start()
        STATE_FILE.write_text(str(state))
        print(state)
        return 0
    if argv == ["down"]:
        if not STATE_FILE.exists():
            print("no cluster started by `up`", file=sys.stderr)
            return 1
        LocalSlurm(Path(STATE_FILE.read_text())).stop()
        STATE_FILE.unlink()
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

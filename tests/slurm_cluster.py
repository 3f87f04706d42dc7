"""A real one-node SLURM on loopback for the cluster tests (`make test-slurm`).

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
DAEMONS = ("munged", "slurmctld", "slurmd")


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
    return f"""{MARK}
ClusterName=rrttest
SlurmctldHost={node}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket={state}/munge/munge.socket
StateSaveLocation={state}/ctld
SlurmdSpoolDir={state}/spool
SlurmctldPidFile={state}/slurmctld.pid
SlurmdPidFile={state}/slurmd.pid
SlurmctldLogFile={state}/slurmctld.log
SlurmdLogFile={state}/slurmd.log
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
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
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
        (self.state / "spool").mkdir(exist_ok=True)
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
        self._spawn("slurmctld", ["slurmctld", "-D", "-c", "-i"])
        self._spawn("slurmd", ["slurmd", "-D", "-N", self.node])
        self._wait(self._idle, timeout, "the node to be idle in sinfo")
        return self

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.state / f"{name}.out", "wb")
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        (self.state / f"{name}.child.pid").write_text(str(self.procs[name].pid))

    def _idle(self) -> bool:
        r = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
        return r.returncode == 0 and r.stdout.strip() in ("idle", "mixed")

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
        this module wrote."""
        if (self.state / "slurmctld.child.pid").exists():
            subprocess.run(["scancel", "--full", "-u", "root"], capture_output=True)
        for name in reversed(DAEMONS):
            stop_pid(self.procs.get(name), self.state / f"{name}.child.pid")
        if CONF.exists() and MARK in CONF.read_text():
            CONF.unlink()


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

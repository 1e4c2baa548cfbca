"""What the benchmark reads from /proc: CPU time and memory of process trees, per-CPU busy time, TCP
counters, and the wait for other processes on the machine to go quiet."""
import os
import resource
import time

from .common import CLK_TCK


# --------------------------------------------------------------------------- processes

def proc_stat(pid):
    """(ppid, utime+stime ticks) or None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            s = f.read()
    except OSError:
        return None
    rest = s[s.rfind(")") + 2:].split()
    return int(rest[1]), int(rest[11]) + int(rest[12])


def all_ppids():
    m = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = proc_stat(int(d))
            if st:
                m[int(d)] = st[0]
    return m


def proc_tree(pid):
    """pid and all its descendants (alive)."""
    if pid is None or not os.path.exists("/proc/%d" % pid):
        return []
    ppids = all_ppids()
    tree, frontier = [pid], [pid]
    while frontier:
        nxt = [c for c, p in ppids.items() if p in frontier and c not in tree]
        tree += nxt
        frontier = nxt
    return tree


def cpu_user_sys(pids):
    u = k = 0
    for p in pids:
        try:
            with open("/proc/%d/stat" % p) as f:
                st = f.read()
        except OSError:
            continue
        rest = st[st.rfind(")") + 2:].split()
        u += int(rest[11])
        k += int(rest[12])
    return u / CLK_TCK, k / CLK_TCK


def cpu_seconds(pids):
    t = 0
    for p in pids:
        st = proc_stat(p)
        if st:
            t += st[1]
    return t / CLK_TCK


def status_kb(pid, key):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rollup_kb(pid, *fields):
    """Sum of the given fields of /proc/PID/smaps_rollup, kB (0 when unreadable)."""
    total = 0
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in fields:
                    total += int(v.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return total


def pss_kb(pid):
    return rollup_kb(pid, "Pss")


def uss_kb(pid):
    """Unique set size: pages mapped by this process alone (private clean + private dirty)."""
    return rollup_kb(pid, "Private_Clean", "Private_Dirty")


def fd_count(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return 0


def mem_snapshot(pids):
    return {
        "rss_kb": sum(status_kb(p, "VmRSS") for p in pids),
        "pss_kb": sum(pss_kb(p) for p in pids),
        "uss_kb": sum(uss_kb(p) for p in pids),
        "anon_kb": sum(rollup_kb(p, "Anonymous") for p in pids),
        "hwm_kb": sum(status_kb(p, "VmHWM") for p in pids),
        "fds": sum(fd_count(p) for p in pids),
        "nprocs": len(pids),
        "threads": sum(len(os.listdir("/proc/%d/task" % p)) for p in pids if os.path.exists("/proc/%d/task" % p)),
    }


# --------------------------------------------------------------------------- machine

def tcp_active_opens():
    """System-wide TCP connect() count (Tcp ActiveOpens in /proc/net/snmp); loopback includes every process."""
    try:
        with open("/proc/net/snmp") as f:
            rows = [line.split() for line in f if line.startswith("Tcp:")]
        return int(rows[1][rows[0].index("ActiveOpens")])
    except (OSError, ValueError, IndexError):
        return None


def cpu_times():
    """{cpu index: (busy_ticks, total_ticks)} from /proc/stat (busy includes irq/softirq/steal)."""
    m = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                parts = line.split()
                v = [int(x) for x in parts[1:9]]
                idle = v[3] + v[4]
                m[int(parts[0][3:])] = (sum(v) - idle, sum(v), v[7], v)
    return m


def cpu_busy(t0, t1):
    """{cpu: (busy fraction, steal fraction)} between two cpu_times() snapshots."""
    out = {}
    for c in t1:
        if c in t0:
            tot = t1[c][1] - t0[c][1]
            if tot > 0:
                cols = {n: round((b - a) / tot, 3) for n, a, b in zip(
                    ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"), t0[c][3], t1[c][3])}
                out[c] = ((t1[c][0] - t0[c][0]) / tot, (t1[c][2] - t0[c][2]) / tot, cols)
    return out


def children_cpu():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def self_cpu():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def task_cpu_total():
    """user+nice+system ticks over all CPUs (excludes idle, iowait, irq, softirq, steal)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:4]]
    return sum(v) / CLK_TCK


class CpuWindow:
    """CPU accounting over one measured run.

    foreign_cores: CPU used by processes that are NOT this benchmark (others' builds/tests on a
    shared machine) in cores, = all task CPU time - CPU of this driver and all its descendants.
    """

    def __init__(self):
        self.me = os.getpid()

    def ours(self):
        return cpu_seconds(proc_tree(self.me)[1:]) + children_cpu() + self_cpu()

    def start(self):
        self.t0, self.s0, self.all0, self.our0 = time.monotonic(), cpu_times(), task_cpu_total(), self.ours()
        return self

    def stop(self):
        wall = time.monotonic() - self.t0
        s1, all1, our1 = cpu_times(), task_cpu_total(), self.ours()
        busy = cpu_busy(self.s0, s1)
        return {
            "wall_s": wall,
            "busy": busy,
            "foreign_cores": max(0.0, ((all1 - self.all0) - (our1 - self.our0)) / wall) if wall > 0 else None,
        }


def wait_quiet(max_wait, threshold, sample=1.0):
    """Wait (up to max_wait s) until other processes use < threshold cores. Returns seconds waited."""
    t0 = time.monotonic()
    while True:
        w = CpuWindow().start()
        time.sleep(sample)
        f = w.stop()["foreign_cores"] or 0
        waited = time.monotonic() - t0
        if f < threshold or waited >= max_wait:
            return waited, f

"""Starting and stopping processes: pinned to a CPU (taskset), killed with the driver (setpriv --pdeathsig),
every command recorded for the report; and the open-files limit."""
import os
import resource
import shlex
import shutil
import signal
import subprocess
import time

from .common import listening_ports


class Runner:
    def __init__(self, args, outdir):
        self.args = args
        self.outdir = outdir
        self.procs = []
        self.commands = []
        self.pin_ok = args.pin and (os.cpu_count() or 1) >= 2 and shutil.which("taskset")
        self.setpriv = shutil.which("setpriv")

    def record(self, argv, note=None):
        s = " ".join(shlex.quote(a) for a in argv)
        if note:
            s += "    # " + note
        if s not in self.commands:
            self.commands.append(s)

    def pinned(self, cpu, argv):
        if self.pin_ok and cpu is not None:
            return ["taskset", "-c", str(cpu)] + argv
        return argv

    def spawn(self, argv, cpu=None, log_path=None, stdout=None, stdin=subprocess.DEVNULL, note=None):
        full = self.pinned(cpu, argv)
        self.record(full, note)
        if self.setpriv:  # kill the child if this driver dies (even with SIGKILL)
            full = [self.setpriv, "--pdeathsig", "KILL"] + full
        logf = open(log_path, "ab") if log_path else subprocess.DEVNULL
        p = subprocess.Popen(full, stdin=stdin, stdout=stdout if stdout is not None else logf,
                             stderr=logf, start_new_session=True)
        if log_path:
            logf.close()
        self.procs.append(p)
        return p

    def run(self, argv, cpu=None, timeout=None, note=None):
        full = self.pinned(cpu, argv)
        self.record(full, note)
        return subprocess.run(full, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, timeout=timeout)

    def kill(self, p, grace=5.0):
        if p is None:
            return
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        # the process group may still hold children (nginx workers) even if the leader exited
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.wait(2)
        except subprocess.TimeoutExpired:
            pass
        if p in self.procs:
            self.procs.remove(p)

    def kill_all(self):
        for p in list(reversed(self.procs)):
            self.kill(p, grace=3.0)


def wait_listening(ports, proc, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return "exited with code %s" % proc.returncode
        if set(ports) <= listening_ports():
            return None
        time.sleep(0.05)
    return "not listening on %s after %.0fs" % (ports, timeout)


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in (1048576, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want if want > hard else hard))
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]

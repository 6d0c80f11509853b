"""The sandbox's init: started by unshare as the first process of the new pid
namespace (as root, or as root of a new user namespace), with -I -S and no
imports beyond ctypes. It is handed to Python as ``-c`` source, so its command
line, which the code can read in /proc/1/cmdline, names no host path.

It reads the config from a memfd and builds a fresh root: a small tmpfs
holding read-only bind mounts of the interpreter's directories (and ``/usr``),
a private ``/tmp`` with the run's files, a ``/proc`` of this pid namespace, a
``/dev`` of five devices; no ``/sys``, nothing else of the host. It pivots
into that root, drops the old one, makes everything read-only but ``/tmp``,
bounds the IPC namespace's objects (sysctls of this namespace only), then
forks the code's process, which drops privileges, sets the limits and the
seccomp filter and execs. With a ``peer`` it also starts a second program in
a nested pid namespace (it cannot see or signal the first one), under a small
reaper that is that namespace's init; the two talk over pipes on fds 3 and 4.
The init waits (at most ``deadline`` seconds), counts the processes left
behind and exits, and the kernel kills those.

Status lines go to a pipe the code never holds: "pid N" (its pid outside),
"fail STEP WHY", "exit CODE LEFTOVER". Without "probe" the first failure
ends it before any code runs.

Run by plumb.verify.sandbox as ``python -I -S -c SOURCE CONFIG_FD STATUS_FD``; never imported.
"""

import ctypes, fcntl, marshal, os, resource, select, struct, sys, time
config_fd, status_fd = int(sys.argv[1]), int(sys.argv[2])
status_fd, _ = fcntl.fcntl(status_fd, fcntl.F_DUPFD_CLOEXEC, 100), os.close(status_fd)  # away from fds 3 and 4
clock = time.monotonic
with open(config_fd, "rb") as f:
    cfg = marshal.load(f)
libc = ctypes.CDLL(None, use_errno=True)
ROOT = "/tmp"  # where the new root is assembled (any existing directory; it is gone after the pivot)

def say(line):
    os.write(status_fd, (line + "\n").encode())

def step(name, action):
    try:
        action()
    except Exception as exc:
        say(f"fail {name} {exc}".replace("\n", " "))
        if not cfg["probe"]:
            os._exit(126)

def check(result, what):
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")

def mount(source, target, fstype, flags, data=None):
    check(libc.mount(source, target.encode(), fstype, flags, data), "mount " + target)

def mount_setattr(path, recursive, attr_set, attr_clr):
    attr = struct.pack("QQQQ", attr_set, attr_clr, 0, 0)
    check(libc.syscall(442, -100, path.encode(), 0x8000 if recursive else 0, attr, len(attr)), "mount_setattr " + path)

def filesystem():
    sources = [(inside, os.open(host, os.O_PATH)) for host, inside in cfg["binds"]]  # before anything is hidden
    mount(b"tmpfs", ROOT, b"tmpfs", 2 | 4, b"mode=755,size=64k,nr_inodes=256")  # the new root
    for sub in ("tmp", "proc", "dev", "run"):  # /run stays empty
        os.mkdir(ROOT + "/" + sub, 0o755)
    mount(b"proc", ROOT + "/proc", b"proc", 2 | 4 | 8)  # nosuid, nodev, noexec: this pid namespace's
    mount(b"tmpfs", ROOT + "/tmp", b"tmpfs", 2 | 4, cfg["work"].encode())
    mount(b"tmpfs", ROOT + "/dev", b"tmpfs", 2, b"mode=755,size=64k,nr_inodes=64")
    for inside, fd in sources:
        target = ROOT + inside
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            os.makedirs(target, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            open(target, "wb").close()
        mount(f"/proc/self/fd/{fd}".encode(), target, None, 4096 | 16384)  # MS_BIND | MS_REC
        os.close(fd)
    for link, target in cfg["links"].items():
        os.symlink(target, ROOT + link)
    step("ipc", ipc_limits)  # through the new /proc, before it is read-only
    os.chdir(ROOT)
    check(libc.syscall(cfg["pivot_root"], b".", b"."), "pivot_root")  # the old root now sits on top of the new one...
    check(libc.umount2(b".", 2), "detach the old root")  # ...and is gone (MNT_DETACH)
    os.chdir("/")
    mount_setattr("/", True, 1 | 2, 0)  # everything read-only and nosuid...
    mount_setattr("/tmp", False, 0, 1)  # ...but the work dir
    for name, data in cfg["files"].items():
        path = "/tmp/" + name
        with open(path, "wb") as f:
            f.write(data)
        if cfg["owner"] >= 0:
            os.chown(path, cfg["owner"], cfg["owner"])

def ipc_limits():
    if os.stat(ROOT + "/proc/self/ns/ipc").st_ino == cfg["host_ipc"]:
        raise RuntimeError("still in the host's IPC namespace")
    for name, value in cfg["ipc"].items():
        with open(ROOT + "/proc/sys/" + name, "w") as f:
            f.write(value)

def network():
    if os.stat("/proc/self/ns/net").st_ino == cfg["host_network"]:
        raise RuntimeError("still in the host's network namespace")

def drop_privileges(uid):
    if uid >= 0:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    else:  # root of our user namespace: drop every capability, for good
        check(libc.prctl(28, 0x2F, 0, 0, 0), "securebits")  # NOROOT, NO_SETUID_FIXUP, KEEP_CAPS, all locked
        cap = 0
        while libc.prctl(24, cap, 0, 0, 0) == 0:  # PR_CAPBSET_DROP
            cap += 1
        check(libc.capset(struct.pack("II", 0x20080522, 0), bytes(24)), "capset")
    cap = min(cfg["nproc"], resource.getrlimit(resource.RLIMIT_NPROC)[1] & (2**63 - 1))
    resource.setrlimit(resource.RLIMIT_NPROC, (cap, cap))

def limits():
    for res, soft, hard in cfg["rlimits"]:
        ceiling = resource.getrlimit(res)[1] & (2**63 - 1)
        resource.setrlimit(res, (min(soft, ceiling), min(hard, ceiling)))

def syscalls():
    prog = cfg["seccomp"]
    if isinstance(prog, str):
        raise RuntimeError(prog)
    check(libc.prctl(38, 1, 0, 0, 0), "no_new_privs")
    insns = ctypes.create_string_buffer(prog, len(prog))
    check(libc.prctl(22, 2, struct.pack("@HP", len(prog) // 8, ctypes.addressof(insns)), 0, 0), "seccomp")

def start(argv, uid, fds):
    """Fork the code's process: ``fds`` are (fd inside, fd here); the rest is closed by exec. It
    works in /tmp if it owns it (with a peer, the peer does), else in /."""
    child = os.fork()
    if child:
        return child
    os.setsid()  # its own session and process group: kill(0, ...) reaches none of ours
    os.chdir("/tmp" if uid == cfg["owner"] else "/")
    high = [(inside, fcntl.fcntl(here, fcntl.F_DUPFD_CLOEXEC, 100)) for inside, here in fds]
    for inside, here in high:
        os.dup2(here, inside)  # inheritable
    step("processes", lambda: drop_privileges(uid))
    step("limits", limits)
    step("syscalls", syscalls)
    if cfg["probe"]:
        os._exit(0)
    try:
        os.execvpe(argv[0], argv, cfg["env"])
    except OSError as exc:
        os.write(2, f"sandbox: cannot run {argv[0]}: {exc}\n".encode())
    os._exit(127)

def wait(pid, until):
    """The exit code of ``pid``, killed first if it outlives ``until`` (monotonic seconds)."""
    pidfd = os.pidfd_open(pid)
    if not select.select([pidfd], [], [], max(0, until - clock()))[0]:
        os.kill(pid, 9)
    os.close(pidfd)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

def others():
    """Reap what has exited, then count the processes still running here, but this one."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass
    return sum(name.isdigit() and name != "1" for name in os.listdir("/proc"))

def reaper(argv, fds):
    """pid 1 of the peer's namespace, with its own /proc: runs the peer, then exits with the
    number of processes the peer left behind (the kernel kills them as this exits)."""
    try:
        check(libc.unshare(0x00020000), "unshare the peer's mounts")  # CLONE_NEWNS
        mount(b"proc", "/proc", b"proc", 1 | 2 | 4 | 8)  # read-only, nosuid, nodev, noexec
    except OSError as exc:
        say(f"fail processes {exc}")
        os._exit(255)
    null = os.open("/dev/null", os.O_RDONLY)
    peer = start(argv, cfg["peer_uid"], fds + [(0, null), (1, 2)])  # not the main's stdin, nor its stdout
    for _, here in fds:
        os.close(here)
    wait(peer, clock() + cfg["deadline"])
    os._exit(min(others(), 200))

say("pid " + os.readlink("/proc/self"))  # the host's /proc until ours is mounted
step("filesystem", filesystem)
step("processes", lambda: check(libc.prctl(4, 0, 0, 0, 0), "dumpable"))  # the code may share our uid
if cfg["cut_network"]:
    step("network", network)
until = clock() + cfg["deadline"]
if cfg["peer"] is None:
    child = start(cfg["argv"], cfg["uid"], [])
    helper = None
else:  # main: fd 3 reads from the peer, fd 4 writes to it; the peer the other way round
    to_peer, from_peer = os.pipe(), os.pipe()
    child = start(cfg["argv"], cfg["uid"], [(3, from_peer[0]), (4, to_peer[1])])
    step("processes", lambda: check(libc.unshare(0x20000000), "unshare the peer's pid namespace"))  # CLONE_NEWPID
    helper = os.fork()
    if helper == 0:
        os.close(to_peer[1]), os.close(from_peer[0])
        reaper(cfg["peer"], [(3, to_peer[0]), (4, from_peer[1])])
    for fd in to_peer + from_peer:
        os.close(fd)
code = wait(child, until)
left = 0 if helper is None else wait(helper, until)
leftover = others() + (left if left > 0 else 0)
say(f"exit {code} {leftover}")
os._exit(0)  # the kernel now kills what is left; skip the interpreter's teardown

"""The sandbox's init: started by unshare as the first process of the new pid
namespace (as root, or as root of a new user namespace), with -I -S and no
imports beyond ctypes. It reads the config from a memfd, sets up the file
system, forks the code's process, which drops privileges, sets the limits and
the seccomp filter and execs; then it waits (at most ``deadline`` seconds),
counts the processes left behind and exits, and the kernel kills those.
Status lines go to a pipe the code never holds: "pid N" (its pid outside),
"fail STEP WHY", "exit CODE LEFTOVER". Without "probe" the first failure
ends it before any code runs.

Run by plumb.sandbox as ``python -I -S sandbox_init.py CONFIG_FD STATUS_FD``; never imported.
"""

import ctypes, marshal, os, resource, select, struct, sys
config_fd, status_fd = int(sys.argv[1]), int(sys.argv[2])
os.set_inheritable(status_fd, False)
with open(config_fd, "rb") as f:
    cfg = marshal.load(f)
libc = ctypes.CDLL(None, use_errno=True)

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
    keep = {path: os.open(path, os.O_PATH) for path in cfg["keep"]}
    mount(b"proc", "/proc", b"proc", 2 | 4 | 8)  # nosuid, nodev, noexec: this pid namespace's
    for path in cfg["hide"]:
        mount(b"tmpfs", path, b"tmpfs", 0, b"mode=755,size=64k")
    mount(b"tmpfs", "/tmp", b"tmpfs", 2 | 4, cfg["work"].encode())
    for path, fd in keep.items():
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            os.makedirs(path, exist_ok=True)
        else:
            open(path, "wb").close()
        mount(f"/proc/self/fd/{fd}".encode(), path, None, 4096 | 16384)  # MS_BIND | MS_REC
        os.close(fd)
    for link, target in cfg["links"].items():
        os.symlink(target, link)
    mount_setattr("/", True, 1 | 2, 0)  # everything read-only and nosuid...
    mount_setattr("/tmp", False, 0, 1)  # ...but the work dir
    for name, data in cfg["files"].items():
        path = "/tmp/" + name
        with open(path, "wb") as f:
            f.write(data)
        if cfg["uid"] >= 0:
            os.chown(path, cfg["uid"], cfg["uid"])

def network():
    if os.stat("/proc/self/ns/net").st_ino == cfg["host_network"]:
        raise RuntimeError("still in the host's network namespace")

def drop_privileges():
    uid = cfg["uid"]
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

say("pid " + os.readlink("/proc/self"))  # the host's /proc until ours is mounted
step("filesystem", filesystem)
step("processes", lambda: check(libc.prctl(4, 0, 0, 0, 0), "dumpable"))  # the code may share our uid
if cfg["cut_network"]:
    step("network", network)
child = os.fork()
if child == 0:
    os.chdir("/tmp")
    step("processes", drop_privileges)
    step("limits", limits)
    step("syscalls", syscalls)
    if cfg["probe"]:
        os._exit(0)
    try:
        os.execvpe(cfg["argv"][0], cfg["argv"], cfg["env"])
    except OSError as exc:
        os.write(2, f"sandbox: cannot run {cfg['argv'][0]}: {exc}\n".encode())
    os._exit(127)
pidfd = os.pidfd_open(child)
if not select.select([pidfd], [], [], cfg["deadline"])[0]:
    os.kill(child, 9)
code = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
try:
    while os.waitpid(-1, os.WNOHANG)[0]:  # reap, then count what still runs
        pass
except ChildProcessError:
    pass
leftover = sum(name.isdigit() and name != "1" for name in os.listdir("/proc"))
say(f"exit {code} {leftover}")
os._exit(0)  # the kernel now kills what is left; skip the interpreter's teardown

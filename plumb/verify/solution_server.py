"""The solution's process in a unit-test run: imports ``solution`` and answers the judge's calls.

Run inside the sandbox as its peer (``python -I -S -c SOURCE IMPORT_PATH``; never imported by
plumb), in a pid namespace of its own: it cannot see, signal or read the judge. It talks with
the judge over two pipes, moved to fds 60 and 61 (out of the way of code that scribbles on the
low ones); each message is a 4-byte length and a ``marshal`` of plain data. Everything it sends
is only data: the judge decides what the tests' checks make of it.

Requests: ("names",), ("call", id, args, kwargs), ("getattr", id, name), ("iter", id),
("next", id), ("len", id), ("bool", id), ("str", id), ("getitem", id, key), ("contains", id, item).
Arguments are ("v", plain value) or ("h", id) for an object of the solution's the judge holds.
Replies: ("ok", value[, changed arguments]) or ("raise", exception type name, message, traceback).
A value is ("v", plain) or ("h", id, type name); id 0 is the solution module.
"""

import marshal, os, sys

sys.set_int_max_str_digits(0)
IN, OUT = 60, 61
os.dup2(3, IN), os.dup2(4, OUT), os.close(3), os.close(4)
os.set_inheritable(IN, False), os.set_inheritable(OUT, False)
ME = os.getpid()
PLAIN = (type(None), bool, int, float, complex, str, bytes)
BASES = (bool, int, float, complex, str, bytes)
objects = {}


def plain(value, depth=0):
    """``value`` as exact builtin types (subclasses of numbers and strings converted), or a
    ValueError when it holds anything else."""
    kind = type(value)
    if kind in PLAIN:
        return value
    if depth > 100:
        raise ValueError("nested too deep")
    if kind in (list, tuple, set, frozenset):
        return kind(plain(v, depth + 1) for v in value)
    if kind is dict:
        return {plain(k, depth + 1): plain(v, depth + 1) for k, v in value.items()}
    for base in BASES:
        if isinstance(value, base):
            converted = base(value)
            if type(converted) is base:
                return converted
    raise ValueError(kind.__name__)


def encode(value):
    try:
        return ("v", plain(value))
    except (ValueError, RecursionError):
        objects[id(value)] = value
        return ("h", id(value), type(value).__name__)


def send(message):
    if os.getpid() != ME:  # a child the solution forked: it never speaks for the solution
        os._exit(0)
    raw = marshal.dumps(message)
    data = memoryview(len(raw).to_bytes(4, "big") + raw)
    while data:
        data = data[os.write(OUT, data):]


def receive():
    head = read(4)
    return marshal.loads(read(int.from_bytes(head, "big")))


def read(n):
    data = b""
    while len(data) < n:
        chunk = os.read(IN, n - len(data))
        if not chunk:
            os._exit(0)  # the judge is done
        data += chunk
    return data


def failure(exc):
    import traceback
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-2000:]
    try:
        message = str(exc)[:2000]
    except BaseException:
        message = ""
    return ("raise", type(exc).__name__, message, text)


def argument(arg):
    return objects[arg[1]] if arg[0] == "h" else arg[1]


def answer(request):
    verb, target = request[0], objects[request[1]]
    if verb == "call":
        args = [argument(a) for a in request[2]]
        kwargs = {k: argument(v) for k, v in request[3].items()}
        result = target(*args, **kwargs)
        changed = []
        for i, (given, arg) in enumerate(zip(request[2], args)):
            if given[0] == "v" and type(arg) in (list, dict, set, bytearray):
                changed.append((i, encode(arg)))
        return ("ok", encode(result), changed)
    if verb == "getattr":
        return ("ok", encode(getattr(target, request[2])))
    if verb == "iter":
        return ("ok", encode(iter(target)))
    if verb == "next":
        return ("ok", encode(next(target)))
    if verb == "len":
        return ("ok", ("v", int(len(target))))
    if verb == "bool":
        return ("ok", ("v", bool(target)))
    if verb == "str":
        return ("ok", ("v", str(str(target))))
    if verb == "getitem":
        return ("ok", encode(target[argument(request[2])]))
    if verb == "contains":
        return ("ok", ("v", bool(argument(request[2]) in target)))
    raise ValueError(f"unknown request {verb!r}")


null = os.open(os.devnull, os.O_RDONLY)
os.dup2(null, 0)
sys.path[:0] = ["/tmp"]
sys.path += sys.argv[1].split(os.pathsep)
try:
    import solution
    objects[0] = solution
    names = {k: encode(v) for k, v in list(vars(solution).items()) if not k.startswith("__")}
    ready = ("ok", names)
except BaseException as exc:
    ready = failure(exc)
    if os.getpid() != ME:
        os._exit(0)
request = receive()
send(ready)
if ready[0] != "ok":
    os._exit(0)
while True:
    request = receive()
    try:
        reply = answer(request)
    except BaseException as exc:
        reply = failure(exc)
    try:
        send(reply)
    except (ValueError, TypeError, RecursionError) as exc:  # a value marshal cannot write
        send(failure(exc))

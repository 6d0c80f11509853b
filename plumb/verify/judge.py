"""The judge of a unit-test run: runs the task's tests and decides each verdict.

Run inside the sandbox as its main program (``python -I -S -c SOURCE IMPORT_PATH NAME...``;
never imported by plumb). It never imports the solution: the solution runs in another process
(``solution_server.py``, in a pid namespace nested in the judge's, so it cannot see, signal or
read it), and the tests reach it through a stand-in ``solution`` module whose functions send
their arguments over a pipe and get plain data back (numbers, strings, bytes, None and lists,
tuples, dicts and sets of them) or a handle to an object that stays on the solution's side.
A value that claims to equal anything cannot cross; a handle equals only itself. Every check
(``==``, ``assert``, ``pytest.raises``) runs here, on data, in code the solution never touches.

The key (random per run) and the compiled tests arrive on stdin, then stdin is /dev/null; the
records go to its own copy of stdout with a keyed BLAKE2 MAC, and nothing else writes there.
Records: ("test", name, passed, detail), ("solution-error", traceback), ("task-error", traceback),
("gone", where) when the solution's process ended, ("done",).

Blame: when the tests fail at import, they run again against a stub ``solution`` (any name, any
call, any operation gives a stub) in a fresh module: the same failure there is the tests' own
(a task error); any other is the completion's.
"""

import builtins, marshal, os, sys, types
from _blake2 import blake2b  # hashlib's, without loading OpenSSL: faster

sys.set_int_max_str_digits(0)
given = sys.stdin.buffer.read()
key, (code, names, source, filename) = given[:32], marshal.loads(given[32:])
code = marshal.loads(code)
del given
os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
records = os.dup(1)
os.dup2(2, 1)  # what the tests print goes to stderr
IN, OUT = 3, 4
os.set_inheritable(IN, False), os.set_inheritable(OUT, False)
PLAIN = (type(None), bool, int, float, complex, str, bytes)
MAX_MESSAGE = 64 << 20


def report(*fields):
    body = repr(fields)
    mac = blake2b(body.encode(), key=key, digest_size=16).hexdigest()
    os.write(records, f"plumb-test-record {mac} {body}\n".encode())


def finish():
    report("done",)
    os._exit(0)


def failure(exc):
    import linecache, traceback
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)  # not the disk's
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__.tb_next))[-2000:]


class SolutionGone(BaseException):
    """The solution's process ended: no test after this can pass."""


class SolutionError(Exception):
    """An exception the solution raised whose type is not one of Python's builtins."""


def checked(value, depth=0):
    """``value`` if it is plain data all the way down, else ValueError."""
    kind = type(value)
    if kind in PLAIN:
        return value
    if depth > 100 or kind not in (list, tuple, set, frozenset, dict):
        raise ValueError(f"not plain data: {kind.__name__}")
    for item in (value.items() if kind is dict else value):
        if kind is dict:
            checked(item[0], depth + 1), checked(item[1], depth + 1)
        else:
            checked(item, depth + 1)
    return value


class Channel:
    broken = ""

    def ask(self, *request):
        if self.broken:
            raise SolutionGone(self.broken)
        data = marshal.dumps(request)
        try:
            self.write_all(len(data).to_bytes(4, "big") + data)
            size = int.from_bytes(self.read(4), "big")
            if size > MAX_MESSAGE:
                raise ValueError(f"a reply of {size} bytes")
            reply = marshal.loads(self.read(size))
        except SolutionGone:
            raise
        except BrokenPipeError:
            self.broken = "the solution's process ended"
            raise SolutionGone(self.broken)
        except (ValueError, EOFError, TypeError) as exc:
            self.broken = f"the solution's process broke the protocol ({exc})"
            raise SolutionGone(self.broken)
        if type(reply) is tuple and reply and reply[0] == "raise" and len(reply) == 4:
            name, message, trace = (str(part) if type(part) is str else "" for part in reply[1:])
            kind = getattr(builtins, name, None)
            usable = isinstance(kind, type) and issubclass(kind, Exception) and kind.__module__ == "builtins"
            exc = kind(message) if usable else SolutionError(f"{name}: {message}")
            exc.add_note("in the solution:\n" + trace)
            raise exc
        if type(reply) is not tuple or len(reply) < 2 or reply[0] != "ok":
            self.broken = "the solution's process broke the protocol"
            raise SolutionGone(self.broken)
        return reply

    def write_all(self, data):
        view = memoryview(data)
        while view:
            view = view[os.write(OUT, view):]

    def read(self, n):
        data = b""
        while len(data) < n:
            chunk = os.read(IN, min(n - len(data), 1 << 20))
            if not chunk:
                self.broken = "the solution's process ended"
                raise SolutionGone(self.broken)
            data += chunk
        return data


channel = Channel()


def value(encoded):
    """A reply's value: plain data as it is, a handle as a Remote."""
    if type(encoded) is tuple and len(encoded) == 2 and encoded[0] == "v":
        try:
            return checked(encoded[1])
        except (ValueError, RecursionError):
            pass
    elif type(encoded) is tuple and len(encoded) == 3 and encoded[0] == "h" and type(encoded[1]) is int:
        return Remote(encoded[1], str(encoded[2]))
    channel.broken = "the solution's process broke the protocol"
    raise SolutionGone(channel.broken)


def argument(arg):
    if type(arg) is Remote:
        return ("h", arg._id)
    try:
        return ("v", checked(arg))
    except (ValueError, RecursionError):
        raise TypeError(f"only plain data (numbers, strings, bytes, None, lists, tuples, dicts, sets) and the "
                        f"solution's own objects can be passed to the solution, not {type(arg).__name__}") from None


class Remote:
    """An object of the solution's, left on its side: calls, attributes, iteration, len, bool,
    str, indexing and ``in`` go there and bring back data; it equals only itself."""

    __slots__ = ("_id", "_type")

    def __init__(self, ident, kind):
        object.__setattr__(self, "_id", ident)
        object.__setattr__(self, "_type", kind)

    def __call__(self, *args, **kwargs):
        sent = [argument(a) for a in args]
        reply = channel.ask("call", self._id, sent, {str(k): argument(v) for k, v in kwargs.items()})
        for index, new in (reply[2] if len(reply) > 2 and type(reply[2]) is list else []):
            old, new = args[index] if type(index) is int and 0 <= index < len(args) else None, value(new)
            if type(old) is type(new) and type(old) in (list, bytearray):
                old[:] = new
            elif type(old) is type(new) and type(old) in (dict, set):
                old.clear(), old.update(new)
        return value(reply[1])

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return value(channel.ask("getattr", self._id, name)[1])

    def __iter__(self):
        it = value(channel.ask("iter", self._id)[1])
        return it if type(it) is Remote else iter(it)

    def __next__(self):
        try:
            return value(channel.ask("next", self._id)[1])
        except StopIteration:
            raise StopIteration from None

    def __len__(self):
        return int(value(channel.ask("len", self._id)[1]))

    def __bool__(self):
        return value(channel.ask("bool", self._id)[1]) is True

    def __str__(self):
        return str(value(channel.ask("str", self._id)[1]))

    def __repr__(self):
        return f"<the solution's {self._type} object>"

    def __getitem__(self, key):
        return value(channel.ask("getitem", self._id, argument(key))[1])

    def __contains__(self, item):
        return value(channel.ask("contains", self._id, argument(item))[1]) is True

    def __eq__(self, other):
        return type(other) is Remote and other._id == self._id

    def __ne__(self, other):
        return not self == other

    def __hash__(self):
        return hash(self._id)


class Stub:
    """Stands for anything in the stub solution: every use gives a stub, nothing raises."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return Stub()

    def __call__(self, *args, **kwargs):
        return Stub()

    def __iter__(self):
        return iter(())

    def __len__(self):
        return 0

    def __index__(self):
        return 0

    __int__ = __index__

    def __float__(self):
        return 0.0

    def __bool__(self):
        return True

    def __getitem__(self, key):
        return Stub()

    def __hash__(self):
        return id(self)


for op in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "and", "or", "xor", "lshift", "rshift",
           "matmul"):
    setattr(Stub, f"__{op}__", Stub.__call__)
    setattr(Stub, f"__r{op}__", Stub.__call__)
for op in ("neg", "pos", "abs", "invert"):
    setattr(Stub, f"__{op}__", Stub.__call__)
for op in ("lt", "le", "gt", "ge"):
    setattr(Stub, f"__{op}__", lambda self, other: True)


def equal(a, b):
    if not a == b:
        raise AssertionError(f"{a!r:.200} != {b!r:.200}")
    return True


def load(solution):
    """Execute the tests' module with ``solution`` as the solution module; return the module."""
    sys.modules["solution"] = solution
    module = types.ModuleType("test_task")
    module.__dict__.update({k: v for k, v in vars(solution).items() if not k.startswith("__")})
    module.__file__ = filename
    module.__plumb_equal__ = equal
    sys.modules["test_task"] = module
    exec(code, module.__dict__)
    return module


def stub_module():
    stub = types.ModuleType("solution")
    stub.__getattr__ = lambda name: (_ for _ in ()).throw(AttributeError(name)) if name.startswith("__") else Stub()
    return stub


def same_failure_without_the_solution(exc):
    """Whether the tests fail at import the same way against the stub solution."""
    try:
        load(stub_module())
    except BaseException as again:
        return type(again) is type(exc) and str(again) == str(exc)
    return False


sys.path += sys.argv[1].split(os.pathsep)
names = sys.argv[2:]
try:
    names_reply = channel.ask("names")[1]
    solution = types.ModuleType("solution")
    solution.__file__ = "/tmp/solution.py"
    if type(names_reply) is not dict:
        raise SolutionGone("the solution's process broke the protocol")
    for name, encoded in names_reply.items():
        if type(name) is str:
            setattr(solution, name, value(encoded))
except SolutionGone as exc:
    report("gone", str(exc))
    finish()
except BaseException as exc:  # the solution does not import
    report("solution-error", "".join(getattr(exc, "__notes__", [])) or failure(exc))
    finish()
try:
    module = load(solution)
except SolutionGone as exc:
    report("gone", str(exc))
    finish()
except BaseException as exc:
    broken = failure(exc)
    if same_failure_without_the_solution(exc):
        report("task-error", broken)
    elif not names:
        report("test", "<script>", False, broken)
    else:
        report("solution-error", broken)
    finish()
if not names:
    report("test", "<script>", True, "")
for name in names:
    try:
        module.__dict__[name]()
    except SolutionGone as exc:
        report("gone", str(exc))
        finish()
    except BaseException as exc:
        report("test", name, False, failure(exc))
    else:
        report("test", name, True, "")
finish()

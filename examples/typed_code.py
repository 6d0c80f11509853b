"""A verifier plugin in one file: code must carry type annotations.

List it in a workspace's plumb.toml (``plugins = ["./typed_code.py"]``) and it
shows up in ``plumb plugins``, scores completions in ``plumb verify``, can be
named in a constitution's ``[[principles.checks]]`` and weighted in
``plumb train grpo --reward typed-code``. The score is the share of the
functions in the completion's code whose every argument and return value is
annotated; a completion without code, or code that does not parse, scores 0.
"""

import ast
import re

from plumb import hookimpl
from plumb.core.records import Reward

__version__ = "1.0"
FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)


def typed_code(task, completion):
    fenced = FENCE.search(completion.text)
    code = fenced.group(1) if fenced else completion.text
    try:
        tree = ast.parse(code)
    except SyntaxError as exc:
        return Reward("typed-code", 0.0, f"the code does not parse: {exc.msg} (line {exc.lineno})")
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    if not functions:
        return Reward("typed-code", 0.0, "no function in the code")
    typed = [f.name for f in functions
             if f.returns is not None and all(a.annotation is not None for a in f.args.args + f.args.kwonlyargs
                                              if a.arg not in ("self", "cls"))]
    untyped = sorted({f.name for f in functions} - set(typed))
    return Reward("typed-code", len(typed) / len(functions),
                  f"{len(typed)}/{len(functions)} functions fully annotated"
                  + (f"; missing: {', '.join(untyped)}" if untyped else ""))


@hookimpl
def plumb_register_verifiers(register):
    register("typed-code", "share of functions whose arguments and return are annotated", score=typed_code)

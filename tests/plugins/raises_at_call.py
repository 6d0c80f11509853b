
from plumb import hookimpl

@hookimpl
def plumb_register_verifiers(register):
    raise ValueError("verifier table is corrupt")

"""Verifiers: score a completion by running or checking it (untrusted code runs in plumb.verify.sandbox)."""

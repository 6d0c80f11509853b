"""Model servers over HTTP: a pool of OpenAI-compatible servers (``pool``: bounded concurrency per
server, retries with backoff, unreachable servers skipped and probed back, results in input order)
and the chat completions and option log-probs the ``openai:`` backend asks them for (``openai_chat``)."""

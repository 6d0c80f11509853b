"""The steps a person runs, as plain functions: one pipeline under every face.

    session.py     open_session(): workspace, store, plugin manager, constitution
    sample.py      sample(session, SampleOptions, sink)      answers with provenance
    train.py       train(session, TrainOptions, sink)        a LoRA adapter (child process)
    export.py      export_adapter(session, adapter, base)    GGUF LoRA for llama.cpp
    compare.py     compare(session, CompareOptions, sink)    base vs tuned, one loaded model
    critique.py    critique(session, CritiqueOptions, sink)  CAI critique and revision rounds
    judge.py       judge(session, JudgeOptions, sink)        pairs judged in both orders (or by the checks)
    pairs.py       build(store, by)                          judgments -> training pairs, drops counted
    label.py       queue / record / undo                     a person's A/B labels
    agreement.py   agreement(session, judge)                 judge vs person, judge vs checks
    evaluate.py    evaluate(session, EvalOptions, sink)      held-out base vs tuned, measured
    tune.py        tune(session, TuneOptions, sink)          the main job: every stage above, then a report
    queries.py     recent_adapters, runs_overview, ...       what the faces read from the store, by name
    runs.py        run_lifecycle(): start -> optimize -> done | failed | interrupted
    child.py       an optimizer in a child process, its events streamed back

Every stage reads its inputs from the store, writes its outputs there with
provenance, reports through an event sink (``plumb.core.records.Event``) and,
rerun after an interruption, skips what is already done. Nothing here imports
click, rich or textual: the CLI and the TUI parse, call and display.
"""

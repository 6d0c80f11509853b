"""The Textual terminal UI: ``plumb tui [WORKSPACE] [--screen NAME]``.

    factory.py   make_app(): the one way the CLI and the tests build the app
    app.py       PlumbApp: a mode per screen, the keys 1-8, the open session
    commands.py  the command palette (ctrl+p): every screen and every screen action
    plumb.tcss   the one stylesheet
    screens/     one top-level screen per file (the table of them: screens/__init__.py)
    widgets/     the widgets screens share, one per file

The screens are faces over ``plumb.pipeline`` and the store, like the CLI:
long work (sampling, training, generating) runs in thread workers, training
in a child process, and nothing heavy (torch, transformers, peft, llama_cpp)
is imported before a worker needs it.
"""

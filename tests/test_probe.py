"""The alignment-tax probe's tally: which facts the tuned model keeps, and which the base said first."""

from __future__ import annotations

from types import SimpleNamespace

from plumb.pipeline import probe as probe_mod
from plumb.pipeline.probe import first_sentence, right


def test_right_takes_whole_words_and_plurals():
    assert right("Bees make honey.", ["honey"])
    assert right("A baby cat is called a kitten; kittens are small.", ["kitten"])
    assert right("Young dogs are puppies.", ["puppy"])
    assert not right("Honeycomb is wax.", ["honey"])


def test_first_sentence():
    assert first_sentence("  The Sun rises in the east. It sets in the west.") == "The Sun rises in the east."
    assert first_sentence("No end mark here") == "No end mark here"
    assert first_sentence("A list:\n- one") == "A list:"


def test_probe_counts_what_is_kept_and_what_the_base_said_first(monkeypatch):
    rows = [  # (base, tuned, accepted)
        ("Berlin is the capital.", "The capital is Berlin.", ["Berlin"]),  # said first, kept
        ("Bees are complex creatures. They make honey.", "Bees are complex creatures.", ["honey"]),  # said later, lost
        ("The heart pumps blood.", "The human body has organs.", ["heart"]),  # said first, lost
        ("A week is long.", "A week has 7 days.", ["7", "seven"]),  # the base did not know it
    ]
    result = SimpleNamespace(rows=[SimpleNamespace(prompt_id=i, prompt=f"q{i}", base=b, tuned=t)
                                   for i, (b, t, _) in enumerate(rows)])
    monkeypatch.setattr(probe_mod, "_questions", lambda session, split: {i: r[2] for i, r in enumerate(rows)})
    monkeypatch.setattr(probe_mod, "compare", lambda *a, **k: result)
    out = probe_mod.probe(None, "base.gguf", "adapter.gguf")
    assert (out.n, out.base_right, out.tuned_right) == (4, 3, 2)
    assert (out.kept.k, out.kept.n) == (1, 3) and not out.ok
    assert (out.said_first.k, out.said_first.n) == (1, 2)
    assert [(x["question"], x["base_said_first"]) for x in out.lost] == [("q1", False), ("q2", True)]
    assert out.to_dict()["said_first"]["n"] == 2

    asked = []

    def compare(session, opts, sink=None):  # the rows of the questions asked, as the compare stage gives them
        asked.append((opts.sides, opts.prompt_ids))
        return SimpleNamespace(rows=[r for r in result.rows if not opts.prompt_ids or r.prompt_id in opts.prompt_ids])

    monkeypatch.setattr(probe_mod, "compare", compare)
    first = probe_mod.probe(None, "base.gguf", "adapter.gguf", said_first_only=True)
    # the base once on every question, then base and tuned on the two it answers in its first sentence
    assert asked == [(("base",), ()), (("base", "tuned"), (0, 2))]
    assert (first.said_first.k, first.said_first.n) == (first.kept.k, first.kept.n) == (1, 2)


def test_length_matched_distinct2_counts_the_same_bigrams_on_both_sides():
    from plumb.core.diversity import distinct2, distinct2_matched

    base = ["the cat sat on the mat and the cat sat on the mat again", "a dog ran far away from the dog"]
    tuned = ["the cat sat down.", "a dog ran."]
    assert distinct2(tuned) > distinct2(base)  # shorter answers repeat fewer bigrams: pooled distinct-2 rises
    m = distinct2_matched(list(zip(base, tuned)))
    # cut to 4 and 3 words: base "the cat sat on" + "a dog ran", tuned "the cat sat down." + "a dog ran."
    assert m == {"base": 1.0, "tuned": 1.0}
    looped = distinct2_matched([("one two three four", "one two one two")])
    assert looped["tuned"] < looped["base"]  # a loop still shows at equal length

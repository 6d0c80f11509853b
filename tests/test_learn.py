"""What `plumb tune` learns from: ranking sampled answers (and their sentence cuts) by the checks."""

from __future__ import annotations

from plumb.core.store import Provenance
from plumb.pipeline import learn
from plumb.pipeline.session import open_session

LONG = ("Paris is the capital of France. It sits on the Seine and has about two million people. "
        "Furthermore, it is known for its museums, its food and its long history as a centre of art. "
        "Moreover, millions of visitors come every year!")
VAGUE = "It is a city."


def test_prefixes_cut_after_each_sentence_or_line_but_not_fragments():
    assert learn.prefixes(LONG) == [
        "Paris is the capital of France.",
        "Paris is the capital of France. It sits on the Seine and has about two million people.",
        LONG.rsplit(" Moreover", 1)[0],
    ]
    assert learn.prefixes('He said "Stop here now." Then left again.') == ['He said "Stop here now."']
    assert learn.prefixes("Steps to follow today\n- one\n- two") == ["Steps to follow today",
                                                                     "Steps to follow today\n- one"]
    assert learn.prefixes("Dr. Who. 1. Go.") == []  # cuts under MIN_CUT_WORDS words are fragments
    assert learn.prefixes("One sentence only, no cut.") == []


def _session(tmp_path, answers):
    session = open_session(tmp_path / "ws", create=True, constitution="plain-speaker")
    pid = session.store.add_prompt([{"role": "user", "content": "Tell me about Paris."}], split="train")
    for text in answers:
        session.store.add_sample(pid, text, Provenance(model="m"))
    return session, pid


def test_a_cut_of_the_models_own_answer_beats_a_vaguer_short_sample(tmp_path):
    session, pid = _session(tmp_path, [LONG, VAGUE])
    const = session.constitution("plain-speaker")
    whole = learn.rank(session, const, "m", [pid])
    # without cuts, the vague answer wins: it is the only one under the word and sentence limits
    assert whole.answers[pid][0].text == VAGUE
    assert learn.sft_rows(whole)[0]["messages"][-1]["content"] == VAGUE

    cut = learn.rank(session, const, "m", [pid], with_prefixes=True)
    best = cut.answers[pid][0]
    # with cuts, the longest cut that passes every check wins: two sentences, under 30 words, no connective
    assert best.cut and best.all_passed
    assert best.text == "Paris is the capital of France. It sits on the Seine and has about two million people."
    assert learn.sft_rows(cut)[0]["messages"][-1]["content"] == best.text
    # the DPO pair contrasts stopping there with the worst whole answer (the long one, which goes on)
    pair = learn.dpo_rows(cut)[0]
    assert pair["chosen"] == best.text and pair["rejected"] == LONG
    # the round's statistics describe what was sampled, not the cuts
    assert cut.n_answers == 2 and cut.pass_share() == whole.pass_share() == 0.5
    session.close()


def test_own_prompts_give_some_to_eval_and_dev_once(tmp_path):
    from plumb.pipeline.tune import prompts

    session = open_session(tmp_path / "ws", create=True, constitution="plain-speaker")
    for i in range(20):
        session.store.add_prompt([{"role": "user", "content": f"question {i}?"}], split="train")
    said = []
    assert prompts(session, said.append) == "workspace"
    counts = {s: len(session.store.prompts(s)) for s in ("train", "dev", "eval")}
    assert counts == {"train": 14, "dev": 2, "eval": 4}
    assert "4 held out for evaluation" in said[0].message
    said.clear()
    prompts(session, said.append)  # the split stays as it is
    assert {s: len(session.store.prompts(s)) for s in ("train", "dev", "eval")} == counts and not said
    session.close()


def test_wilson_interval_always_holds_the_rate():
    """At 0 of n and n of n the rounding once put the rate outside its interval (a negative error bar
    stopped the report's chart)."""
    from plumb.pipeline.stats import wilson

    for n in range(1, 300):
        for k in (0, n // 3, n):
            lo, hi = wilson(k, n)
            assert 0.0 <= lo <= k / n <= hi <= 1.0
    assert wilson(44, 44)[1] == 1.0 and wilson(0, 11)[0] == 0.0


def test_tied_candidates_rank_by_agreement_with_the_other_samples(tmp_path):
    """Three answers that all pass: by length alone the lunar story would be the target; the one saying what
    the other samples say (52 weeks) is chosen instead. Its own cuts do not vote for it."""
    lunar = "The number of weeks in a year depends on the lunar cycle and the phases of the moon."
    answers = [lunar, "A year has 52 weeks and one or two extra days.", "There are 52 weeks in a year."]
    session, pid = _session(tmp_path, answers)
    const = session.constitution("plain-speaker")
    ranked = learn.rank(session, const, "m", [pid], with_prefixes=True)
    scores = {a.text: a.score for a in ranked.answers[pid]}
    assert scores[lunar] == max(scores.values()) and len({scores[t] for t in answers}) == 1  # a tie by the checks
    assert "52" in ranked.answers[pid][0].text
    assert "52" in learn.sft_rows(ranked)[0]["messages"][-1]["content"]
    assert learn.agreement(lunar, [learn.content_words(t) for t in answers[1:]]) < learn.agreement(
        answers[2], [learn.content_words(t) for t in answers[:2]])
    session.close()


def test_restating_the_question_does_not_count_as_agreement():
    """Every sample repeats the question's words; only what an answer adds to them counts."""
    asked = learn.content_words("Why do gardeners use mulch on flower beds?")
    others = [learn.content_words(t) for t in ("Gardeners use mulch on flower beds to keep moisture in the soil.",
                                               "Mulch keeps the soil moist and stops weeds in flower beds.")]
    restated = "Gardeners use mulch on their flower beds for a variety of reasons."
    answer = "It keeps moisture in the soil and stops weeds."
    assert learn.agreement(restated, others) > learn.agreement(answer, others)  # the question's words would win
    assert learn.agreement(answer, others, asked) > learn.agreement(restated, others, asked)

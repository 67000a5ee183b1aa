import math

import pytest

from tinylm.evaluate import MetricAccumulator, exact_match, normalize, text_metrics

PREDICTIONS = [
    "The cat sat on the mat.",
    "Paris is it",
    "Water boils at 100 degrees Celsius.",
    "",
    "Shakespeare wrote Hamlet!",
    "Yes",
    "the mitochondria, the powerhouse of the cell",
]
REFERENCES = [
    "The cat is on the red mat.",
    "It is Paris.",
    "At sea level, water boils at 100 degrees Celsius.",
    "Four.",
    "shakespeare wrote hamlet",
    "No",
    "The mitochondria is the powerhouse of the cell.",
]


def test_rouge_on_two_pairs_worked_by_hand():
    # Pair 1: "The cat sat on the mat." vs "The cat is on the red mat."
    #   tokens  pred: the cat sat on the mat (6)    ref: the cat is on the red mat (7)
    #   ROUGE-1: overlap the×2 cat on mat = 5, P = 5/6, R = 5/7, F = 2PR/(P+R) = (50/42)/(65/42) = 10/13
    #   ROUGE-2: pred bigrams (5): the cat, cat sat, sat on, on the, the mat
    #            ref bigrams (6): the cat, cat is, is on, on the, the red, red mat
    #            overlap "the cat", "on the" = 2, P = 2/5, R = 2/6, F = (4/15)/(11/15) = 4/11
    #   ROUGE-L: LCS "the cat on the mat" = 5, the same P and R as ROUGE-1, F = 10/13
    # Pair 2: "Paris is it" vs "It is Paris." (case and the full stop do not count)
    #   tokens  pred: paris is it    ref: it is paris
    #   ROUGE-1: overlap 3, P = R = 1, F = 1
    #   ROUGE-2: pred {paris is, is it} vs ref {it is, is paris}: no overlap, F = 0
    #   ROUGE-L: LCS has length 1 (any one word), P = R = 1/3, F = 1/3
    # Averaged over the two pairs:
    #   rouge1 = (10/13 + 1) / 2 = 23/26, rouge2 = (4/11 + 0) / 2 = 2/11, rougeL = (10/13 + 1/3) / 2 = 43/78
    scores = text_metrics(PREDICTIONS[:2], REFERENCES[:2])
    assert scores["rouge1"] == pytest.approx(23 / 26, abs=1e-6)
    assert scores["rouge2"] == pytest.approx(2 / 11, abs=1e-6)
    assert scores["rougeL"] == pytest.approx(43 / 78, abs=1e-6)
    assert scores["count"] == 2


def test_identical_texts_score_one_and_disjoint_texts_zero():
    texts = ["the quick brown fox jumps", "over the lazy dog today ."]
    same = text_metrics(texts, list(texts))
    assert same == {"bleu": 1.0, "rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0, "exact_match": 1.0, "count": 2}
    disjoint = text_metrics(["alpha beta gamma delta epsilon"], ["one two three four five"])
    assert disjoint == {
        "bleu": 0.0,
        "rouge1": 0.0,
        "rouge2": 0.0,
        "rougeL": 0.0,
        "exact_match": 0.0,
        "count": 1,
    }


def test_bleu_of_a_partial_match_worked_by_hand():
    # 13a splits off the full stop and keeps case: 7 tokens each, "The cat sat on the mat ."
    # against "The cat is on the mat ."; clipped matches per order:
    #   1-grams 6/7 (all but "sat"), 2-grams 4/6 (The cat, on the, the mat, mat .),
    #   3-grams 2/5 (on the mat, the mat .), 4-grams 1/4 (on the mat .); equal lengths, no brevity penalty.
    # BLEU = (6/7 · 4/6 · 2/5 · 1/4)^(1/4) = (2/35)^(1/4)
    scores = text_metrics(["The cat sat on the mat."], ["The cat is on the mat."])
    assert scores["bleu"] == pytest.approx((2 / 35) ** 0.25, rel=1e-12)


def test_bleu_smooths_a_missing_order_and_penalises_brevity_as_sacrebleu_does():
    # "on the mat today" (4 tokens) against "the cat is on the mat" (6 tokens):
    #   1-grams 3/4, 2-grams 2/3 (on the, the mat), 3-grams 1/2 (on the mat), 4-grams 0/1.
    #   sacrebleu's 'exp' smoothing counts the first order without a match as 1/(2·1) = 1/2.
    #   Brevity penalty exp(1 - 6/4) = exp(-1/2).
    # BLEU = exp(-1/2) · (3/4 · 2/3 · 1/2 · 1/2)^(1/4) = exp(-1/2) · (1/8)^(1/4)
    scores = text_metrics(["on the mat today"], ["the cat is on the mat"])
    assert scores["bleu"] == pytest.approx(math.exp(-0.5) * (1 / 8) ** 0.25, rel=1e-12)


def test_bleu_is_zero_when_no_prediction_has_four_tokens_as_in_sacrebleu():
    # No 4-grams at all in the predictions: sacrebleu (without effective order) scores 0, even for a
    # perfect answer; ROUGE and exact match still credit it.
    scores = text_metrics(["Paris"], ["Paris"])
    assert scores["bleu"] == 0.0
    assert scores["rouge1"] == 1.0 and scores["exact_match"] == 1.0


def test_bleu_matches_sacrebleu():
    sacrebleu = pytest.importorskip("sacrebleu")
    expected = sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES]).score / 100
    assert text_metrics(PREDICTIONS, REFERENCES)["bleu"] == pytest.approx(expected, rel=1e-9)


def test_rouge_matches_google_rouge_score():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    per_pair = [scorer.score(r, p) for p, r in zip(PREDICTIONS, REFERENCES)]
    scores = text_metrics(PREDICTIONS, REFERENCES)
    for key in ("rouge1", "rouge2", "rougeL"):
        expected = sum(s[key].fmeasure for s in per_pair) / len(per_pair)
        assert scores[key] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("  The  Eiffel\tTower!! ", "the eiffel tower"),
        ("Paris.", "paris"),
        ("Is it?", "is it"),
        ("Yes . !", "yes"),
        ("e.g.", "e.g"),
        ("Paris, France", "paris, france"),
        ("...", ""),
    ],
)
def test_normalize(text, normalized):
    assert normalize(text) == normalized


def test_exact_match_compares_normalized_answers():
    predictions = ["Paris.", "  the EIFFEL tower ", "Paris, France", "42"]
    references = ["paris", "The Eiffel Tower!", "Paris France", "forty-two"]
    assert exact_match(predictions, references) == 0.5
    # Of the seven shared pairs only "Shakespeare wrote Hamlet!" / "shakespeare wrote hamlet" match.
    assert text_metrics(PREDICTIONS, REFERENCES)["exact_match"] == pytest.approx(1 / 7)


def test_accumulator_over_three_batches_equals_text_metrics_on_all():
    accumulator = MetricAccumulator()
    for start, stop in [(0, 3), (3, 5), (5, 7)]:
        accumulator.add(PREDICTIONS[start:stop], REFERENCES[start:stop])
    streamed = accumulator.compute()
    at_once = text_metrics(PREDICTIONS, REFERENCES)
    assert streamed.keys() == at_once.keys()
    assert streamed["count"] == at_once["count"] == 7
    assert streamed["bleu"] == pytest.approx(at_once["bleu"], rel=1e-12)
    assert streamed["exact_match"] == at_once["exact_match"]
    for key in ("rouge1", "rouge2", "rougeL"):
        assert streamed[key] == pytest.approx(at_once[key], abs=1e-6)
    assert 0.0 < at_once["bleu"] < 1.0 and 0.0 < at_once["rougeL"] < 1.0


@pytest.mark.parametrize("score", [text_metrics, exact_match, MetricAccumulator().add])
def test_mismatched_lengths_raise_naming_both(score):
    with pytest.raises(ValueError, match="3 predictions and 2 references"):
        score(["a", "b", "c"], ["a", "b"])


@pytest.mark.parametrize("score", [text_metrics, exact_match, MetricAccumulator().add])
def test_empty_input_raises(score):
    with pytest.raises(ValueError, match="0 predictions and 0 references"):
        score([], [])


def test_a_single_string_instead_of_a_list_raises():
    with pytest.raises(ValueError, match="single string"):
        text_metrics("Paris", "Paris")


def test_accumulator_with_nothing_added_raises():
    with pytest.raises(ValueError, match="nothing to score"):
        MetricAccumulator().compute()

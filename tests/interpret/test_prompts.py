"""The prompts' markings and the readers of the answers: an answer out of format is an AnswerError."""

import pytest

from saekit.interpret.client import AnswerError
from saekit.interpret.contexts import Example
from saekit.interpret.prompts import MAX_EXPLANATION_CHARS, explain_messages, marked, read_explanation, read_labels


def test_marked_puts_each_run_of_marked_tokens_in_one_pair():
    assert marked(["a", " b", " c", " d"], [False, True, True, False]) == "a<< b c>> d"
    assert marked(["a", "b"], [True, True]) == "<<ab>>" and marked(["a"], [False]) == "a"


def test_the_explain_prompt_marks_active_tokens_with_their_strength():
    user = explain_messages([Example(("the", " cat"), (0.0, 2.0)), Example(("a", " dog"), (1.0, 0.0))])[1]["content"]
    assert "Excerpt 1: the<< cat>>\nActive tokens: ' cat' 10" in user and "Excerpt 2: <<a>> dog\nActive tokens: 'a' 5" in user


@pytest.mark.parametrize(
    "answer, phrase",
    [
        ("Explanation: cats", "cats"),
        ("Let me think.\nThe tokens are animals.\n**Explanation:** \"small animals\"\n", "small animals"),
        ("explanation: first\nEXPLANATION: second", "second"),
    ],
)
def test_the_explanation_is_the_last_explanation_line(answer, phrase):
    assert read_explanation(answer) == phrase


def test_a_long_explanation_is_cut():
    assert len(read_explanation("Explanation: " + "x" * 1000)) == MAX_EXPLANATION_CHARS


@pytest.mark.parametrize("answer", ["", "cats and dogs", "Explanation:", "Explanation: \n", "The explanation: is hard"])
def test_an_answer_without_an_explanation_line_is_refused(answer):
    with pytest.raises(AnswerError, match="no 'Explanation: ...' line"):
        read_explanation(answer)


@pytest.mark.parametrize(
    "answer, n, labels",
    [("[1, 0, 1]", 3, [1, 0, 1]), ("I think [0, 1] ... final: [1,1]", 2, [1, 1]), ("[true, false]", 2, [1, 0])],
)
def test_labels_are_the_last_list_of_the_answer(answer, n, labels):
    assert read_labels(answer, n) == labels


@pytest.mark.parametrize(
    "answer, words",
    [
        ("yes, no, yes", "holds no list"),
        ("[yes, no]", "list is not JSON"),
        ("[1, 0]", "expected a list of 3 values 0 or 1"),
        ("[1, 0, 2]", "expected a list of 3 values 0 or 1"),
        ("[1.0, 0, 1]", "expected a list of 3 values 0 or 1"),
        ('["1", 0, 1]', "expected a list of 3 values 0 or 1"),
    ],
)
def test_labels_out_of_format_are_refused(answer, words):
    with pytest.raises(AnswerError, match=words):
        read_labels(answer, 3)

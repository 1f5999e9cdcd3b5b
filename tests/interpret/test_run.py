"""A whole run on a tiny suite (a random Llama built from a config, two random SAEs) against a stub
endpoint on 127.0.0.1: scores that are right for an oracle and for a coin, failures counted, resume,
the results in the browser's pages."""

import dataclasses
import json
import shutil

import pytest
from chat_server import Reply, StubChat, chat_reply
from oracle import Coin, Oracle

import saekit
from saekit.browser import build_browser
from saekit.browser.explanations import FILE, read_explanations
from saekit.browser.pages import latent_list_page
from saekit.browser.store import CACHE_DIR, load_data
from saekit.errors import ConfigError, EndpointError
from saekit.interpret import EndpointConfig, InterpretSettings, interpret
from saekit.interpret.scoring import classification_scores
from tests.browser.browser_helpers import HOSTILE, RAW_MARKUP, tiny_setup

pytestmark = pytest.mark.usefixtures("one_thread")
QUIET = {"progress": False}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The browser's tiny suite with a third SAE, sparse enough (TopK, k=1) that each latent is zero
    throughout many windows: the non-activating contexts scoring needs."""
    root = tmp_path_factory.mktemp("interpret")
    suite, cfg = tiny_setup(root)
    sparse = saekit.build_sae("topk", d_in=16, d_sae=24, k=1, seed=4)
    sparse.metadata.update(site="layers.1.resid_post", model=cfg.model)
    saes = {name: saekit.load_sae(suite / name) for name in ("L0-topk", "L1-relu")}
    suite = saekit.save_suite({**saes, "L1-sparse": sparse}, root / "suite3")
    build_browser(suite, cfg, progress=False)
    return suite, cfg


@pytest.fixture
def suite(built, tmp_path):
    """A fresh copy of the built suite, browser caches included."""
    return shutil.copytree(built[0], tmp_path / "suite")


def endpoint(stub, **settings):
    return EndpointConfig(stub.url, "stub-model", **{"retries": 0, "backoff_s": 0, **settings})


def test_an_oracle_scores_perfectly_and_the_results_are_saved(suite):
    data = load_data(suite / "L1-sparse")
    oracle = Oracle(data, range(24))
    with StubChat(oracle) as stub:
        results = interpret(suite / "L1-sparse", endpoint(stub), **QUIET)
    saved = read_explanations(suite / "L1-sparse", 24)
    assert saved == results["L1-sparse"] and saved.model == "stub-model" and saved.prompts_version == "saekit-autointerp-1"
    fired = [k for k in range(24) if int(data.stats.fire_count[k]) > 0]
    assert sorted(saved.latents) == fired and set(saved.failed) == set(range(24)) - set(fired)
    assert all(why == "never fired on the browser's sample" for why in saved.failed.values())
    scored = 0
    for k, result in saved.latents.items():
        assert result.explanation == f"latent {k}"
        for scores in (result.detection, result.fuzzing):
            if scores is not None:
                assert scores.failed == 0 and scores.accuracy == 1.0
                scored += scores.n
                if scores.balanced_accuracy is not None:  # both classes present
                    assert scores.balanced_accuracy == 1.0 and scores.precision == scores.recall == 1.0
    assert scored > 100 and any(r.detection and r.detection.balanced_accuracy == 1.0 for r in saved.latents.values())


def test_a_coin_scores_what_its_answers_are_worth(suite):
    data = load_data(suite / "L0-topk")
    coin = Coin(data, range(24))
    with StubChat(coin) as stub:
        saved = interpret(suite / "L0-topk", endpoint(stub, concurrency=3), **QUIET)["L0-topk"]
    for k, result in saved.latents.items():
        for task, scores in (("detection", result.detection), ("fuzzing", result.fuzzing)):
            asked = [(t, a) for latent, kind, texts, answers in coin.asked if (latent, kind) == (k, task) for t, a in zip(texts, answers)]
            expected = classification_scores([coin.truth(k, task, t) for t, _ in asked], [a for _, a in asked])
            assert scores == (expected if asked else None), (k, task)
    balanced = [r.detection.balanced_accuracy for r in saved.latents.values() if r.detection and r.detection.balanced_accuracy is not None]
    assert 0.25 < sum(balanced) / len(balanced) < 0.75  # chance, not skill


def test_answers_out_of_format_are_counted_not_raised(suite):
    data = load_data(suite / "L1-sparse")
    oracle = Oracle(data, range(24))
    answers = iter(["[1, 0, 1, 0, 1, 0, 1]", "I cannot tell.", "[1, 1, 1, 1, 2]", "[yes, no]", "[0.5]"] * 1000)

    def respond(body):  # explanations in format, every classification answer out of it
        explaining = "Explanation: <the phrase>" in body["messages"][0]["content"]
        return oracle(body) if explaining else chat_reply(next(answers))

    with StubChat(respond) as stub:
        saved = interpret(suite / "L1-sparse", endpoint(stub), **QUIET)["L1-sparse"]
    for result in saved.latents.values():
        for scores in (result.detection, result.fuzzing):
            if scores is not None:
                assert scores.n == 0 and scores.failed > 0 and scores.accuracy is None


def test_an_explanation_out_of_format_fails_that_latent_only(suite):
    with StubChat(lambda body: chat_reply("This feature is about cats.")) as stub:
        saved = interpret(suite / "L1-sparse", endpoint(stub), latents=[0, 1, 2], **QUIET)["L1-sparse"]
    assert saved.latents == {} and set(saved.failed) == {0, 1, 2}
    assert all("no 'Explanation: ...' line" in why or "never fired" in why for why in saved.failed.values())
    with StubChat(Oracle(load_data(suite / "L1-sparse"), range(24))) as stub:
        again = interpret(suite / "L1-sparse", endpoint(stub), latents=[0, 1, 2], **QUIET)["L1-sparse"]
    assert set(again.latents) | set(again.failed) == {0, 1, 2} and again.latents  # tried again, now explained
    assert all("never fired" in why for why in again.failed.values())


def test_a_run_resumes_where_it_stopped_and_retries_what_failed(suite):
    data = load_data(suite / "L1-sparse")
    oracle = Oracle(data, range(24))
    fired = [k for k in range(24) if int(data.stats.fire_count[k]) > 0]
    calls = {"n": 0}

    def dies_after_a_while(body):
        calls["n"] += 1
        return oracle(body) if calls["n"] <= 12 else Reply(401, b'{"error": "key revoked"}')

    with StubChat(dies_after_a_while) as stub:
        with pytest.raises(EndpointError, match="refused the request: HTTP 401"):
            interpret(suite / "L1-sparse", endpoint(stub, concurrency=1), settings=InterpretSettings(save_every=1000), **QUIET)
    first = read_explanations(suite / "L1-sparse", 24)
    assert 0 < len(first.latents) < len(fired)  # what was done before the refusal is saved
    with StubChat(oracle) as stub:
        interpret(suite / "L1-sparse", endpoint(stub), **QUIET)
        again = len(stub.requests)
        done = read_explanations(suite / "L1-sparse", 24)
        assert sorted(done.latents) == fired and all(done.latents[k] == v for k, v in first.latents.items())
        interpret(suite / "L1-sparse", endpoint(stub), **QUIET)
        assert len(stub.requests) == again  # nothing left to ask
    assert again > 0


def test_results_of_another_model_are_never_overwritten(suite):
    with StubChat(Oracle(load_data(suite / "L1-sparse"), range(24))) as stub:
        interpret(suite / "L1-sparse", endpoint(stub), latents=[0, 1], **QUIET)
        before = (suite / "L1-sparse" / FILE).read_bytes()
        other = dataclasses.replace(endpoint(stub), model="other-model")
        with pytest.raises(ConfigError, match="holds explanations by 'stub-model'.*move it away"):
            interpret(suite / "L1-sparse", other, **QUIET)
        asked = len(stub.requests)
        with pytest.raises(ConfigError, match="L1-sparse.*holds explanations by 'stub-model'"):
            interpret(suite, other, **QUIET)  # the suite: refused before any SAE is asked about
        assert len(stub.requests) == asked and not (suite / "L0-topk" / FILE).exists()
    assert (suite / "L1-sparse" / FILE).read_bytes() == before


def test_latents_outside_the_sae_are_refused_before_any_request(suite):
    with StubChat(lambda body: chat_reply("x")) as stub:
        with pytest.raises(ConfigError, match="latent.s. 24, 99 outside SAE L1-sparse's 0..23"):
            interpret(suite / "L1-sparse", endpoint(stub), latents=[3, 24, 99], **QUIET)
        with pytest.raises(ConfigError, match="latent.s. 24 outside SAE L0-topk's 0..23"):
            interpret(suite, endpoint(stub), latents=[3, 24], **QUIET)  # before the suite's first SAE is asked about
    assert stub.requests == []


def test_explanations_show_escaped_in_the_pages_and_the_export(suite, built, tmp_path):
    with StubChat(lambda body: chat_reply(f"Explanation: {HOSTILE}")) as stub:
        interpret(suite, endpoint(stub), latents=iter(range(4)), **QUIET)  # the whole suite; an iterator read once
    browser = build_browser(suite, built[1], export=tmp_path / "site", progress=False)
    data = browser.saes["L1-sparse"]
    explained = next(k for k in data.explanations.latents)
    page = latent_list_page("t", data)
    assert "&lt;meta http-equiv" in page and not any(raw in page for raw in RAW_MARKUP)
    shown = json.loads((tmp_path / "site" / "L1-sparse" / "page.json").read_text())["explanations"]  # as the latent page reads it
    assert shown["latents"][str(explained)]["explanation"] == data.explanations.latents[explained].explanation
    assert shown["latents"][str(explained)]["detection"].startswith("balanced accuracy")
    assert shown["failed"][str(next(iter(data.explanations.failed)))].startswith("never fired")
    for name in ("L0-topk", "L1-relu", "L1-sparse"):
        saved = read_explanations(suite / name, 24)
        assert set(saved.latents) | set(saved.failed) == {0, 1, 2, 3}


def test_an_sae_without_a_browser_cache_gets_one_first(suite, built):
    shutil.rmtree(suite / "L1-sparse" / CACHE_DIR)
    with StubChat(lambda body: chat_reply("Explanation: x\n[0, 0, 0, 0, 0]")) as stub:
        saved = interpret(suite / "L1-sparse", endpoint(stub), latents=[0, 1], browser=built[1], **QUIET)["L1-sparse"]
    assert (suite / "L1-sparse" / CACHE_DIR / "latents.bin").exists() and set(saved.latents) | set(saved.failed) == {0, 1}

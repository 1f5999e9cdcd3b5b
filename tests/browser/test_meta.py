"""A browser cache's meta.json is read strictly: bounded in size, every key present and of its type,
any problem an ArtifactError naming the file (and the key); strings from it show as text."""

import json

import pytest
from browser_helpers import HOSTILE, RAW_MARKUP, tiny_data
from test_pages import all_pages

from saekit.browser import meta as meta_module
from saekit.browser.store import CACHE_DIR, cached_key, load_data, save_data
from saekit.errors import ArtifactError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def cache(tmp_path):
    """(SAE folder, its meta.json) of a freshly saved tiny cache."""
    folder = tmp_path / "sae"
    folder.mkdir()
    save_data(folder, tiny_data(), "the-key")
    return folder, folder / CACHE_DIR / "meta.json"


def edit(path, change):
    meta = json.loads(path.read_text(encoding="utf-8"))
    change(meta)
    path.write_text(json.dumps(meta), encoding="utf-8")


def test_the_cache_reads_back_as_written(cache):
    folder, _ = cache
    data, back = tiny_data(), load_data(folder)
    assert back.info == data.info and back.vocab == data.vocab and back.layout == data.layout
    assert cached_key(folder) == "the-key"


def test_hostile_strings_in_meta_json_show_as_text(cache):
    folder, path = cache

    def hostile(meta):
        info = meta["info"]
        meta["name"] = HOSTILE
        for key in ("architecture", "site", "model", "logit_effects"):
            info[key] = HOSTILE
        info["sample"].update(corpus=HOSTILE, split=HOSTILE)
        info["hparams"] = {HOSTILE: HOSTILE, "list": [HOSTILE]}
        info["metrics"] = {HOSTILE: 1.0}
        meta["vocab"] = dict.fromkeys(meta["vocab"], HOSTILE)

    edit(path, hostile)
    data = load_data(folder)
    assert data.name == HOSTILE and data.info.site == HOSTILE
    for page in all_pages(HOSTILE, data):
        assert not [raw for raw in RAW_MARKUP if raw in page]


@pytest.mark.parametrize(
    "where, key",
    [
        (("info", "d_sae"), "meta.info.d_sae"),
        (("info", "sample", "context_size"), "meta.info.sample.context_size"),
        (("info", "sample", "skip_positions"), "meta.info.sample.skip_positions"),
        (("info", "sample", "tokens"), "meta.info.sample.tokens"),
        (("info", "sample", "l0"), "meta.info.sample.l0"),
        (("info", "metrics", "train mse"), "meta.info.metrics['train mse']"),
        (("n_rows",), "meta.n_rows"),
        (("window_before",), "meta.window_before"),
        (("layout",), "meta.layout"),
        (("vocab", "3"), "meta.vocab['3']"),  # the wrong type: a number where text belongs
        (("name",), "meta.name"),
        (("info", "site"), "meta.info.site"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_by_name(cache, where, key):
    folder, path = cache

    def put(meta):
        target = meta
        for part in where[:-1]:
            target = target[part]
        target[where[-1]] = 42 if where[-1] in ("3", "name", "site") else HOSTILE

    edit(path, put)
    with pytest.raises(ArtifactError, match=r"meta\.json is not a browser cache") as caught:
        load_data(folder)
    assert key in str(caught.value) and f"delete {path.parent}" in str(caught.value)
    assert cached_key(folder) is None  # so the next build recomputes it


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda m: m.pop("info"), "missing required key info"),
        (lambda m: m["info"]["sample"].pop("corpus"), "meta.info.sample: missing required key corpus"),
        (lambda m: m.update(extra=1), "unknown key 'extra'"),
        (lambda m: m.update(format=0), "format is 0"),
        (lambda m: m.update(layout=[8, 8]), "0 <= skip < context"),
        (lambda m: m.update(layout=[8]), "layout must be"),
        (lambda m: m.update(info=[]), "meta.info: expected an object"),
        (lambda m: m["info"].update(hparams={"k": {"nested": 1}}), "meta.info.hparams['k']: expected a JSON scalar"),
        (lambda m: m["info"].update(metrics={"m": True}), "meta.info.metrics['m']: expected a number"),
        (lambda m: m["info"].update(d_sae=0), "d_sae must be positive"),
        (lambda m: m.update(vocab={"-1": "x"}), "meta.vocab['-1']"),
        (lambda m: m.update(vocab={"1_0": "x"}), "meta.vocab['1_0']"),
        (lambda m: m["dims"].update(top=0), "record sizes must be in 0..4096"),
        (lambda m: m["dims"].update(bins=10**9), "record sizes must be in 0..4096"),
        (lambda m: m["dims"].pop("window"), "meta.dims: missing required key window"),
        (lambda m: m.update(window_before=4), "window_before=4 is outside the windows of 4 tokens"),
        (lambda m: m.update(contexts=1), "n_rows=28 is not in 0..the rows of 1 contexts"),
    ],
)
def test_a_meta_json_missing_or_breaking_a_key_is_refused(cache, change, words):
    folder, path = cache
    edit(path, change)
    with pytest.raises(ArtifactError, match="meta.json is not a browser cache") as caught:
        load_data(folder)
    assert words in str(caught.value)


@pytest.mark.parametrize(
    "content, words",
    [
        (b"", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b"\xff\xfe{}", "is not UTF-8 text"),
        (b"[" * 100_000 + b"]" * 100_000, "nests lists or objects deeper than"),
        (b"[]", "expected a JSON object, found list"),
        (b"null", "expected a JSON object, found NoneType"),
    ],
)
def test_a_broken_meta_json_is_refused_by_name(cache, content, words):
    folder, path = cache
    path.write_bytes(content)
    with pytest.raises(ArtifactError, match=words) as caught:
        load_data(folder)
    assert str(path) in str(caught.value)
    assert cached_key(folder) is None


def test_a_missing_meta_json_is_refused_by_name(cache):
    folder, path = cache
    path.unlink()
    with pytest.raises(ArtifactError, match=f"{path} does not exist"):
        load_data(folder)


def test_a_huge_meta_json_is_refused_before_it_is_parsed(cache, monkeypatch):
    folder, path = cache
    size = path.stat().st_size
    monkeypatch.setattr(meta_module, "MAX_JSON_BYTES", size)
    assert load_data(folder).name == "tiny"  # exactly at the limit: read
    path.write_bytes(b"{" * (size + 1))  # not JSON: a parse would say so
    with pytest.raises(ArtifactError, match=f"{path} is larger than {size:,} bytes"):
        load_data(folder)

"""`saekit browse` on SAEs of board-game models: the held-out games they are shown on, the boards of the
latents' top positions as stored, cached and served, and the settings that make no sense refused."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from game_helpers import write_game_sae
from test_boards import chess_board, othello_board
from test_browser_e2e import ARGS, CHROMIUM, open_latent

import saekit
from saekit.boardgames.othello_tokens import decode_tokens
from saekit.boardgames.pgn import decode_pgn
from saekit.browser import BrowserConfig, LiveModel, build_browser, serve_in_thread
from saekit.browser.page_data import store_files
from saekit.browser.store import Browser, load_data
from saekit.cli.main import main
from saekit.errors import ArtifactError, ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def othello(tmp_path_factory):
    root = tmp_path_factory.mktemp("othello")
    folder = write_game_sae(root, "othello")
    return folder, build_browser(folder, BrowserConfig(games=12), progress=False).saes["sae"]


@pytest.fixture(scope="module")
def chess(tmp_path_factory):
    root = tmp_path_factory.mktemp("chess")
    folder = write_game_sae(root, "chess")
    return folder, build_browser(folder, BrowserConfig(games=6), progress=False).saes["sae"]


def test_an_othello_sae_is_shown_on_held_out_games_with_the_boards_of_its_top_positions(othello):
    _, data = othello
    boards = data.boards
    assert boards is not None and boards.game == "othello"
    assert data.layout == (59, 0) and data.info.sample.corpus == "othello games (seed 1)"
    assert data.vocab[data.tokens[0, 0].item()].strip() in {"d3", "c4", "f5", "e6"}  # an opening move, by name
    moves = decode_tokens(data.tokens.numpy())
    r = boards.records
    assert np.array_equal(r["rows"], data.stats.top_rows[:, : r["rows"].shape[1]].numpy())
    latent = int(np.argmax((r["rows"] >= 0).sum(1)))
    for k, row in enumerate(r["rows"][latent]):
        game, ply = divmod(int(row), 59)
        assert r["squares"][latent, k].tolist() == othello_board(moves[game, : ply + 1]).tolist()
        assert r["played"][latent, k] == moves[game, ply]


def test_a_chess_sae_is_shown_on_held_out_games_with_the_boards_of_its_top_positions(chess):
    _, data = chess
    r = data.boards.records
    assert data.boards.game == "chess" and data.layout == (48, 0)
    latent = int(np.argmax((r["rows"] >= 0).sum(1)))
    for k, row in enumerate(r["rows"][latent]):
        game, index = divmod(int(row), 48)
        pieces, landed, white = chess_board(decode_pgn(data.tokens[game].numpy())[: index + 1])
        assert r["squares"][latent, k].tolist() == pieces.tolist()
        assert (int(r["played"][latent, k]), bool(r["first_to_move"][latent, k])) == (landed, white)


def test_the_boards_are_cached_and_served_as_stored(othello):
    folder, data = othello
    again = load_data(folder)
    assert again.boards is not None and again.boards.names == data.boards.names
    assert again.boards.records.tobytes() == data.boards.records.tobytes()
    files = store_files("t", data)
    assert files["boards.bin"] == data.boards.records.tobytes()
    extra = json.loads(files["page.json"])["extras"][0]
    assert extra["kind"] == "board" and extra["record_size"] * 16 == len(files["boards.bin"])


def test_a_damaged_board_cache_is_refused_by_name(othello, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(othello[0], folder)
    cache = folder / "browser-cache"
    meta = json.loads((cache / "boards.json").read_text())
    (cache / "boards.json").write_text(json.dumps({**meta, "properties": ["<script>alert(1)</script>"]}))
    with pytest.raises(ArtifactError, match="boards.json: properties must be"):
        load_data(folder)
    (cache / "boards.json").write_text(json.dumps({**meta, "properties": meta["properties"][:3]}))
    with pytest.raises(ArtifactError, match=r"boards.bin does not match.*best holds values outside -1..2"):
        load_data(folder)
    (cache / "boards.json").write_text(json.dumps(meta))
    (cache / "boards.bin").write_bytes((cache / "boards.bin").read_bytes()[:-1])
    with pytest.raises(ArtifactError, match="boards.bin holds .* bytes, not the 16 records"):
        load_data(folder)


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--corpus", "sotu-2"], r"trained on othello games .* --corpus \(corpus\) make no sense"),
        (["--tokens", "99", "--skip-positions", "1"], r"--tokens \(n_tokens\), --skip-positions \(skip_positions\)"),
    ],
)
def test_a_text_flag_for_a_game_sae_is_refused_by_name(othello, tmp_path, capsys, flags, words):
    assert main(["browse", str(othello[0]), *flags, "--export", str(tmp_path / "site")]) == 2
    err = capsys.readouterr().err
    assert re.search(words, err) and "Traceback" not in err
    with pytest.raises(ConfigError, match="text setting"):
        build_browser(othello[0], BrowserConfig(corpus="sotu-2"), progress=False)


def test_games_for_a_text_sae_and_a_mixed_suite_are_refused_by_name(othello, tmp_path):
    text = saekit.build_sae("topk", d_in=16, d_sae=16, k=3, seed=1)
    text.metadata.update(site="layers.0.resid_post")
    saekit.save_sae(text, tmp_path / "text")
    with pytest.raises(ConfigError, match="--games .* these SAEs were trained on text"):
        build_browser(tmp_path / "text", BrowserConfig(games=5), progress=False)
    with pytest.raises(ConfigError, match=r"--game-seed \(game_seed\) is for an SAE trained on a board-game model"):
        build_browser(tmp_path / "text", BrowserConfig(game_seed=4), progress=False)
    suite = saekit.save_suite({"text": text, "game": saekit.load_sae(othello[0])}, tmp_path / "suite")
    with pytest.raises(ConfigError, match=r"different data \(text: text, game: othello games\)"):
        build_browser(suite, progress=False)


def test_a_game_sae_whose_cache_lost_its_boards_is_refused_by_name(othello, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(othello[0], folder)
    (folder / "browser-cache" / "boards.json").unlink()
    with pytest.raises(ArtifactError, match="browser-cache holds no boards for this SAE of a game model; delete it"):
        build_browser(folder, BrowserConfig(games=12), progress=False)


def test_a_game_sae_runs_the_model_its_provenance_names_and_needs_one(othello, tmp_path):
    live = LiveModel.load(othello[0])
    assert live.loaded.name == json.loads((othello[0] / "provenance.json").read_text())["data"]["model"]
    assert len(live.run("sae", "d3 c5 f6").tokens) == 3  # square names are the model's words
    folder = tmp_path / "sae"
    shutil.copytree(othello[0], folder)
    prov = json.loads((folder / "provenance.json").read_text())
    del prov["data"]["model"]
    (folder / "provenance.json").write_text(json.dumps(prov))
    with pytest.raises(ConfigError, match=r"trained on othello games, but their provenance.json names no model: pass it \(--model\)"):
        build_browser(folder, progress=False)


def test_a_provenance_naming_no_game_is_refused_by_name(othello, tmp_path):
    folder = tmp_path / "sae"
    shutil.copytree(othello[0], folder)
    prov = json.loads((folder / "provenance.json").read_text())
    prov["data"]["games"] = {"game": "go"}
    (folder / "provenance.json").write_text(json.dumps(prov))
    with pytest.raises(ArtifactError, match="provenance.json: data.games must name the game"):
        build_browser(folder, progress=False)


@pytest.mark.parametrize("game", ["othello", "chess"])
def test_the_page_draws_the_boards_in_chromium(request, game):
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[browser-test]')")
    folder, data = request.getfixturevalue(game)
    r = data.boards.records
    latent = int(np.argmax((r["rows"] >= 0).sum(1)))
    server, _ = serve_in_thread(Browser(folder, "boards", {"sae": data}), "127.0.0.1", 0)
    try:
        with sync_api.sync_playwright() as p:
            chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            tab = chromium.new_page(viewport={"width": 1100, "height": 900})
            open_latent(tab, f"http://127.0.0.1:{server.server_address[1]}/sae/latent.html#{latent}", latent)
            shown = int((r["rows"][latent] >= 0).sum())
            assert tab.locator("svg.board").count() == shown
            assert tab.locator("rect.played").count() == shown
            best = data.boards.names[r["best"][latent]]
            text = tab.inner_text("#latent")
            assert f"Best property: {best}, F1 " in text
            has_square = re.match(r"[a-h][1-8]_", best) is not None
            assert tab.locator("rect.mark").count() == (shown if has_square else 0)
            assert ("its square is outlined" in text) == has_square
            assert "game " in text and "to move" in text
            chromium.close()
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("text", ["[1, 2]", '{"data": "games"}', "{not json"])
def test_a_damaged_provenance_is_named_not_taken_for_text(tmp_path, text):
    from saekit.browser.game_sample import game_source

    folder = tmp_path / "sae"
    folder.mkdir()
    (folder / "provenance.json").write_text(text)
    with pytest.raises(ArtifactError, match="provenance.json"):
        game_source({"sae": folder})
    (folder / "provenance.json").unlink()
    assert game_source({"sae": folder}) is None  # none at all: an SAE made elsewhere, shown on text

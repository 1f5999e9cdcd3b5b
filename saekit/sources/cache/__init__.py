"""Activations of many sites cached on disk in shards: written once, read shuffled with exact resume.

Layout of a cache folder::

    manifest.json               what the cache holds; rewritten (atomically) after every shard
    shard-000000.safetensors    rows [0, shard_tokens) of every site: one tensor [rows, d_in] per site
    shard-000001.safetensors    rows [shard_tokens, 2·shard_tokens), and so on; the last may be shorter

``manifest.json``::

    {"format": "saekit-activation-cache", "format_version": 1, "complete": true,
     "info": {"model": "smollm2-135m", "corpus": "...", "context": 256, "seed": 0},
     "sites": ["layers.3.resid_post", "layers.6.resid_post"],
     "d_in": {"layers.3.resid_post": 576, "layers.6.resid_post": 576},
     "dtype": "float16", "shard_tokens": 65536, "total_tokens": 100000,
     "chunks_done": 49, "chunk_rows_done": 100000,
     "shards": [{"file": "shard-000000.safetensors", "rows": 65536, "bytes": 150995160, "sha256": "..."},
                {"file": "shard-000001.safetensors", "rows": 34464, "bytes": 79405272, "sha256": "..."}]}

``sha256`` is the hash of the whole shard file (header included); ``bytes`` its size.

Writing and resuming. :func:`write_cache` checks each incoming chunk (shapes, widths, finiteness, and
that the values survive the cast to the storage dtype), buffers the rows and writes a shard every
``shard_tokens`` rows. Every file is written atomically (:func:`saekit.atomic.write_bytes`: a hidden
temporary name, fsynced, renamed into place), and the manifest is rewritten after each shard, so a
killed run leaves a valid, incomplete cache. Rows still in the buffer are lost; they are produced again
on resume. Every consumed input row is in a shard, so ``total_tokens`` is also the number of input rows
to skip on resume. With ``resume=True`` an existing manifest must describe the same cache (sites,
widths, dtype, shard size, ``info``), otherwise an :class:`~saekit.errors.ArtifactError` says what
differs, and every listed shard must be there with its recorded size; the writer then skips
``total_tokens`` rows of the incoming stream and continues. **The caller must produce the same stream as
the interrupted run** (chunk ``k`` always the same rows). Skipping by iteration still makes the caller
compute the skipped chunks; to avoid that, pass ``chunks`` as a function ``first_chunk -> iterable``
that starts at chunk ``first_chunk``: it is called with ``chunks_done`` (the number of input chunks
whose rows are all in completed shards) and only the rest of the partly written chunk is skipped. A
folder is written by one process at a time.

What the writer deletes or overwrites. Only files it can tell it wrote for the cache in the folder:
the shards the manifest lists, the shard after them when its header is that of a shard of this cache
(a run killed between renaming a shard into place and recording it leaves one; it is written again),
and the temporary files of its atomic writes. ``resume=False`` deletes the listed shards (and that
one) and starts over. Shard files without a readable manifest, or any other file named like a shard,
stop the write with an :class:`~saekit.errors.ArtifactError` that names them and says what to do
(write to another folder, or move or delete them yourself): a folder whose manifest was lost is never
emptied on a guess. Other files in the folder are left alone.

Reading. :class:`CacheSource` serves the cache as an :class:`~saekit.types.ActivationSource`. Shards are
memory-mapped and only the rows a batch needs are read, so caches larger than memory work. Batching
follows the rule of :mod:`saekit.sources.tensor` (batch ``i`` is stream positions ``[i·B, (i+1)·B)``,
epoch ``e`` is positions ``[e·N, (e+1)·N)``; batches may straddle epochs) with a two-level shuffle:

* each epoch permutes the shard order (seeded by ``(seed, epoch)``) and cuts it into windows of
  ``window_shards`` consecutive shards;
* each window's rows are permuted together (seeded by ``(seed, epoch, window)``), and the epoch is the
  windows' permutations one after the other.

Every row appears exactly once per epoch and batch ``i`` depends only on ``(seed, i)``, so ``start``
resumes exactly. Trade-off: a window is read from disk about once per epoch (the page cache holds its
shards while its batches are drawn) instead of one random page per row, but a batch only mixes rows of
``window_shards`` shards, each ``shard_tokens`` consecutive tokens of the writer's stream (about a
million tokens, thousands of documents, with the defaults; a different set of shards every epoch).
When the cache has at most ``window_shards`` shards the shuffle is a uniform permutation of all rows;
pass a larger ``window_shards`` for a better mix when the page cache can hold that many shards. The
order depends on ``window_shards``: a resumed run must use the same value (``describe()`` records it).

Integrity. Every reader loads the manifest through one check (:func:`read_manifest`): every field is
what the writer writes (types, counts, widths, dtype, each shard's size against its rows), and shard
``k`` is ``shard-<k>.safetensors`` in the folder itself, a regular file, never a path elsewhere nor a
symbolic link; anything else is an :class:`~saekit.errors.ArtifactError` naming the manifest and the
entry. On open, every listed shard must be a regular file of its recorded size (a cheap ``lstat``,
done even with ``verify="none"``). ``verify="full"`` also checks every checksum on open; ``"lazy"``
checks a shard's checksum the first time a batch reads from it; ``"none"`` never does. Each time a shard
is memory-mapped, the open file's size is checked against the manifest first and its whole header
against the manifest (sites, dtype, shapes, data offsets that tile the file exactly). Problems raise
an ArtifactError naming the shard file and what is wrong; :func:`verify_cache` lists them all without
raising. Rows holding NaN or inf (which the writer refuses, but another writer may not) are refused
when served, with a :class:`~saekit.errors.DataError` naming the shard file, the row and the site. A
cache whose writer has not finished (``complete: false``) can be read: a warning says how many tokens
it holds, and only the completed shards are served.

**Do not truncate or rewrite a shard in place while a process reads the cache.** A memory-mapped file
that shrinks under the map makes the next read of a lost page raise SIGBUS, which kills the process
(Python cannot turn that signal into an exception). saekit's writer never does this: it renames new
files over old ones, and a mapped old file stays readable. Tools that write in place (``truncate``,
``rsync --inplace``, a copy over the same name) can. A shard damaged between two mappings is refused
with an ArtifactError when it is next mapped.

The package's modules, one job each: :mod:`~saekit.sources.cache.manifest` (the format: manifest and
storage dtypes), :mod:`~saekit.sources.cache.shards` (shard files: integrity checks and memory maps),
:mod:`~saekit.sources.cache.writer` (:func:`write_cache`) and :mod:`~saekit.sources.cache.source`
(:class:`CacheSource`).
"""

from saekit.sources.cache.manifest import (
    DEFAULT_SHARD_TOKENS,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    CacheManifest,
    ShardRecord,
    read_manifest,
)
from saekit.sources.cache.shards import CacheProblem, verify_cache
from saekit.sources.cache.source import DEFAULT_WINDOW_SHARDS, CacheSource, Verify
from saekit.sources.cache.writer import Chunk, ChunkStream, write_cache

__all__ = [
    "DEFAULT_SHARD_TOKENS",
    "DEFAULT_WINDOW_SHARDS",
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "CacheManifest",
    "CacheProblem",
    "CacheSource",
    "Chunk",
    "ChunkStream",
    "ShardRecord",
    "Verify",
    "read_manifest",
    "verify_cache",
    "write_cache",
]

-- vocker metadata store (SQLite, WAL mode).
-- Content lives in files (blobs/, pool/); this database holds what names it.
-- Object IDs are lowercase hex BLAKE3-256. Local facts (times, source paths)
-- live here only, never in image manifests.

CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

-- One row per blob: a zstd frame inside packs/<pack>.pack at offset, or
-- (pack NULL) a loose file blobs/ab/<id> for large files.
CREATE TABLE IF NOT EXISTS blobs (
    id     TEXT PRIMARY KEY,
    size   INTEGER NOT NULL,  -- uncompressed bytes
    csize  INTEGER NOT NULL,  -- compressed bytes on disk
    pack   TEXT,              -- pack ID (hash of the pack file), NULL: loose
    offset INTEGER            -- start of the frame inside the pack
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blobs_pack ON blobs(pack);

-- Canonical tree bytes, keyed by their hash.
CREATE TABLE IF NOT EXISTS trees (
    id   TEXT PRIMARY KEY,
    data BLOB NOT NULL
) WITHOUT ROWID;

-- Canonical manifest bytes plus local facts about the image.
CREATE TABLE IF NOT EXISTS images (
    id       TEXT PRIMARY KEY,
    manifest BLOB NOT NULL,
    created  REAL NOT NULL,   -- local: when it entered this store
    source   TEXT,            -- local: committed from this path
    base_exe TEXT,            -- local: base interpreter seen at commit
    size     INTEGER NOT NULL DEFAULT 0,  -- bytes of file content
    files    INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS tags (
    name  TEXT PRIMARY KEY,   -- name:tag
    image TEXT NOT NULL REFERENCES images(id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tags_image ON tags(image);

CREATE TABLE IF NOT EXISTS containers (
    path      TEXT PRIMARY KEY,
    image     TEXT NOT NULL,
    created   REAL NOT NULL,
    link_mode TEXT NOT NULL,
    python    TEXT            -- base interpreter the container uses
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS containers_image ON containers(image);

-- Stat cache: a file whose stat is unchanged has this normalized blob.
CREATE TABLE IF NOT EXISTS stat_cache (
    path     TEXT PRIMARY KEY,
    dev      INTEGER NOT NULL,
    ino      INTEGER NOT NULL,
    size     INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    blob     TEXT NOT NULL,
    template INTEGER NOT NULL
) WITHOUT ROWID;

-- Pool files by inode: a hardlink of a pool file is known without reading it.
CREATE TABLE IF NOT EXISTS pool_inodes (
    dev  INTEGER NOT NULL,
    ino  INTEGER NOT NULL,
    blob TEXT NOT NULL,
    size INTEGER NOT NULL,
    exec INTEGER NOT NULL,    -- 1: the pool/ab/<id>.x copy
    PRIMARY KEY (dev, ino)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS pool_inodes_blob ON pool_inodes(blob);

-- The pool files the last create of an image linked, all in pool_inodes, as
-- one number (vocker.inodes_digest): a create that links the same inodes
-- writes none of their rows again. Emptied when a pool_inodes row goes;
-- dropped with the image.
CREATE TABLE IF NOT EXISTS image_inodes (
    image  TEXT PRIMARY KEY,
    digest INTEGER NOT NULL
) WITHOUT ROWID;

-- Compiled bytecode: (interpreter cache tag, source blob, optimization) -> pyc
-- file in pool/ (named by the hash of the pyc bytes).
CREATE TABLE IF NOT EXISTS pyc_cache (
    cache_tag TEXT NOT NULL,
    source    TEXT NOT NULL,
    opt       INTEGER NOT NULL,
    pyc       TEXT NOT NULL,
    PRIMARY KEY (cache_tag, source, opt)
) WITHOUT ROWID;

-- Compiled .pyc files in pool/ (named by the hash of their bytes): the size
-- checked before each is linked into a container, and the inode (to restore
-- its read-only attribute on Windows when a container's hardlink is deleted).
CREATE TABLE IF NOT EXISTS pyc_files (
    id   TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    dev  INTEGER NOT NULL,
    ino  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS pyc_files_inode ON pyc_files(dev, ino);

-- Bytecode shipped with an image (pulled with it, by a tag or by the bytecode
-- ID): the record (its hash is the ID; it names the image), whose tree in
-- `trees` maps each source blob to its .pyc blob in `blobs`. Used only for
-- containers of that image, never for another image sharing a source.
CREATE TABLE IF NOT EXISTS bytecode (
    id        TEXT PRIMARY KEY,
    image     TEXT NOT NULL,
    cache_tag TEXT NOT NULL,
    record    BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS bytecode_image ON bytecode(image);

-- Facts of interpreters a create asked (query_python), kept while `stamp`
-- holds: the path's link and the file it reaches unchanged (inode, size,
-- times), and no pyvenv.cfg come or gone beside it.
CREATE TABLE IF NOT EXISTS python_facts (
    path  TEXT PRIMARY KEY,
    stamp TEXT NOT NULL,
    facts TEXT NOT NULL
) WITHOUT ROWID;

-- What create makes of an image (vocker.Plan: folders, files with their
-- sizes, links, small templates, its two halves; every name checked) for one
-- vocker version and system's name rules ("0.1.0 win"), so that the next
-- create walks no tree. Derived from the image's trees; `hash` binds the
-- bytes to the image and rules, and a row that fails it (or of another
-- format) is made again. Dropped with the image.
CREATE TABLE IF NOT EXISTS plans (
    image TEXT NOT NULL,
    rules TEXT NOT NULL,
    data  BLOB NOT NULL,      -- JSON ["plan-2", dirs, paths, types, refs, sizes, links, templates, cuts]
    hash  TEXT NOT NULL,
    PRIMARY KEY (image, rules)
);

-- Creates in progress: written before the staging folder is made, deleted in
-- the transaction that records the container. A row whose process is dead
-- names vocker's own leftovers: its staging folder, and PATH itself if PATH is
-- still that folder (same inode and mtime) after the final rename.
CREATE TABLE IF NOT EXISTS pending_creates (
    path    TEXT PRIMARY KEY,
    stage   TEXT NOT NULL,
    pid     INTEGER NOT NULL,
    host    TEXT NOT NULL,
    started REAL NOT NULL,
    dev      INTEGER,         -- the staging folder once materialized: its
    ino      INTEGER,         --   inode and mtime (kept by the rename)
    mtime_ns INTEGER
) WITHOUT ROWID;

-- Where an image can be fetched again: the repositories and archives it was
-- pulled from or pushed to. Only the blobs of such an image keep their pool
-- copy alone, without a compressed frame (the frame is the repair source for
-- a pool file changed through a container's hardlink).
CREATE TABLE IF NOT EXISTS image_sources (
    image    TEXT NOT NULL,
    location TEXT NOT NULL,
    PRIMARY KEY (image, location)
) WITHOUT ROWID;

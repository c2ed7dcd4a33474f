"""Versioned schema of ``project.db``.

Migrations go through sqlite-utils' ``Migrations`` (each one runs in a transaction together
with the record that it ran), so opening an older project simply applies what is pending.
Add a new function at the end; never edit one that has shipped.
"""

from __future__ import annotations

from sqlite_utils import Database, Migrations

MIGRATIONS = Migrations("signal-studio")


@MIGRATIONS()
def m001_initial(db: Database) -> None:
    db.executescript(
        """
        CREATE TABLE datasets (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            source TEXT,
            description TEXT,
            created TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
        );
        CREATE TABLE items (
            id INTEGER PRIMARY KEY,
            dataset_id INTEGER NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
            hash TEXT NOT NULL,
            ext TEXT NOT NULL,
            size INTEGER NOT NULL,
            width INTEGER NOT NULL,
            height INTEGER NOT NULL,
            mode TEXT NOT NULL,
            caption TEXT NOT NULL DEFAULT '',
            category TEXT,
            flags TEXT NOT NULL DEFAULT '[]',
            meta TEXT,
            source_path TEXT,
            created TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
        );
        CREATE UNIQUE INDEX items_source ON items(dataset_id, source_path);
        CREATE INDEX items_hash ON items(hash);
        CREATE INDEX items_dataset_category ON items(dataset_id, category);

        CREATE TABLE jobs (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL,
            name TEXT NOT NULL DEFAULT '',
            recipe TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'queued',
            progress REAL NOT NULL DEFAULT 0,
            step INTEGER NOT NULL DEFAULT 0,
            total_steps INTEGER,
            control TEXT,
            pid INTEGER,
            heartbeat REAL,
            resumable INTEGER NOT NULL DEFAULT 0,
            error TEXT,
            run_dir TEXT,
            created TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
            started TEXT,
            ended TEXT
        );
        CREATE INDEX jobs_state ON jobs(state);

        CREATE TABLE metrics (
            id INTEGER PRIMARY KEY,
            job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
            step INTEGER NOT NULL,
            key TEXT NOT NULL,
            value REAL NOT NULL,
            time REAL NOT NULL
        );
        CREATE INDEX metrics_job_key_step ON metrics(job_id, key, step);

        CREATE TABLE samples (
            id INTEGER PRIMARY KEY,
            job_id INTEGER REFERENCES jobs(id) ON DELETE CASCADE,
            step INTEGER,
            prompt TEXT NOT NULL,
            seed INTEGER NOT NULL,
            image_hash TEXT NOT NULL,
            settings TEXT NOT NULL DEFAULT '{}',
            created TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
        );
        CREATE INDEX samples_job_step ON samples(job_id, step);

        CREATE TABLE comparisons (
            id INTEGER PRIMARY KEY,
            prompt TEXT NOT NULL,
            image_a TEXT NOT NULL,
            image_b TEXT NOT NULL,
            choice TEXT CHECK (choice IN ('a', 'b', 'tie', 'both_bad', 'skip')),
            shown_left TEXT NOT NULL DEFAULT 'a' CHECK (shown_left IN ('a', 'b')),
            rater TEXT,
            decision_ms INTEGER,
            meta TEXT NOT NULL DEFAULT '{}',
            created TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
        );

        CREATE TABLE models (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL,
            name TEXT NOT NULL,
            path TEXT NOT NULL,
            parent_id INTEGER REFERENCES models(id) ON DELETE SET NULL,
            job_id INTEGER REFERENCES jobs(id) ON DELETE SET NULL,
            card TEXT NOT NULL DEFAULT '{}',
            created TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
        );
        """
    )


@MIGRATIONS()
def m002_curation(db: Database) -> None:
    """Import rejects, perceptual hashes, caption complexity and caption edit history."""
    db.executescript(
        """
        ALTER TABLE items ADD COLUMN phash TEXT;
        ALTER TABLE items ADD COLUMN complexity REAL;
        CREATE TABLE rejects (
            id INTEGER PRIMARY KEY,
            dataset_id INTEGER NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
            source_path TEXT NOT NULL,
            reason TEXT NOT NULL,
            detail TEXT,
            created TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
        );
        CREATE UNIQUE INDEX rejects_source ON rejects(dataset_id, source_path);
        CREATE TABLE caption_edits (
            id INTEGER PRIMARY KEY,
            item_id INTEGER NOT NULL REFERENCES items(id) ON DELETE CASCADE,
            old TEXT NOT NULL,
            new TEXT NOT NULL,
            batch TEXT,
            created TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
        );
        """
    )


@MIGRATIONS()
def m003_quality(db: Database) -> None:
    """Blur score per item; a dataset's curation settings (what its curated view leaves out)."""
    db.executescript(
        """
        ALTER TABLE items ADD COLUMN blur REAL;
        ALTER TABLE datasets ADD COLUMN curation TEXT;
        CREATE INDEX items_phash ON items(dataset_id, phash);
        """
    )


@MIGRATIONS()
def m004_ratings(db: Database) -> None:
    """Judgements move from the pair row into ``ratings``, one row each: a pair may be judged again
    (a repeat that measures a rater's consistency), and an undo is a soft delete kept for audit.
    A pair remembers the job that generated it."""
    db.executescript(
        """
        CREATE TABLE comparisons_new (
            id INTEGER PRIMARY KEY,
            prompt TEXT NOT NULL,
            image_a TEXT NOT NULL,
            image_b TEXT NOT NULL,
            job_id INTEGER REFERENCES jobs(id) ON DELETE SET NULL,
            meta TEXT NOT NULL DEFAULT '{}',
            created TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
        );
        INSERT INTO comparisons_new (id, prompt, image_a, image_b, meta, created) SELECT id, prompt, image_a, image_b, meta, created FROM comparisons;
        CREATE TEMP TABLE old_judgements AS
            SELECT id, choice, shown_left, COALESCE(rater, '') AS rater, decision_ms, created FROM comparisons WHERE choice IS NOT NULL;
        DROP TABLE comparisons;
        ALTER TABLE comparisons_new RENAME TO comparisons;
        CREATE TABLE ratings (
            id INTEGER PRIMARY KEY,
            comparison_id INTEGER NOT NULL REFERENCES comparisons(id) ON DELETE CASCADE,
            choice TEXT NOT NULL CHECK (choice IN ('a', 'b', 'tie', 'both_bad', 'skip')),
            shown_left TEXT NOT NULL CHECK (shown_left IN ('a', 'b')),
            rater TEXT NOT NULL DEFAULT '',
            decision_ms INTEGER,
            is_repeat INTEGER NOT NULL DEFAULT 0,
            created TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
            undone TEXT
        );
        INSERT INTO ratings (comparison_id, choice, shown_left, rater, decision_ms, created)
            SELECT id, choice, shown_left, rater, decision_ms, created FROM old_judgements ORDER BY created, id;
        DROP TABLE old_judgements;
        CREATE INDEX ratings_by_pair ON ratings(comparison_id) WHERE undone IS NULL;
        CREATE INDEX ratings_by_rater ON ratings(rater, id);
        CREATE INDEX comparisons_by_job ON comparisons(job_id);
        """
    )


@MIGRATIONS()
def m005_rankings(db: Database) -> None:
    """A ranking of k images of one prompt is one judgement of the rater, stored whole (the order,
    and the order the images were shown in) and expanded into the k(k-1)/2 pair judgements it
    implies, which point back to it: the reward model and the export read pairs only, an undo
    takes the whole ranking back."""
    db.executescript(
        """
        CREATE TABLE rankings (
            id INTEGER PRIMARY KEY,
            prompt TEXT NOT NULL,
            grp TEXT NOT NULL,
            ranked TEXT NOT NULL,
            shown TEXT NOT NULL,
            rater TEXT NOT NULL DEFAULT '',
            decision_ms INTEGER,
            skipped INTEGER NOT NULL DEFAULT 0,
            created TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
            undone TEXT
        );
        ALTER TABLE ratings ADD COLUMN ranking_id INTEGER REFERENCES rankings(id);
        CREATE INDEX ratings_by_ranking ON ratings(ranking_id) WHERE ranking_id IS NOT NULL;
        """
    )


def latest_version() -> str:
    """Name of the newest migration this code knows."""
    return MIGRATIONS._migrations[-1].name

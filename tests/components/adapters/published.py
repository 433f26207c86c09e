"""Small inputs in the published formats of MovieLens-1M and TalkingData AdTracking, written by
the tests (no licensed data): valid rows drawn from a seed, plus the bad lines a real download
can hold, each with the reason the adapter must give it."""

from __future__ import annotations

import random
from pathlib import Path

ML1M_GENRES = ("Action", "Animation", "Children's", "Comedy", "Drama", "Sci-Fi", "Thriller")
ML1M_BAD_RATINGS = [  # (line, reason)
    ("1::1::5", "wrong_field_count"),
    ("1::1::5::978300760::7", "wrong_field_count"),
    ("", "blank_line"),
    ("x1::1::5::978300760", "bad_value:user_id"),
    ("1::1.5::5::978300760", "bad_value:item_id"),
    ("1::1::6::978300760", "bad_value:rating"),
    ("1::1::4::yesterday", "bad_value:timestamp"),
    ("1::999::4::978300760", "unknown_item"),
]


def write_ml1m(
    root: Path,
    *,
    users: int = 12,
    movies: int = 10,
    ratings_per_user: int = 20,
    start: int = 978_300_000,
    spread_s: int = 2 * 86_400,
    seed: int = 0,
    bad: bool = True,
    like_rate: float | None = None,
) -> list[tuple[str, str, str, str]]:
    """Write ratings.dat, users.dat, movies.dat (``::``, latin-1) under ``root``; return the
    valid ratings ``(user, movie, rating, timestamp)`` in file order. Ratings are uniform in 1-5,
    or 4-5 with probability ``like_rate``. With ``bad``, the lines of :data:`ML1M_BAD_RATINGS`
    are mixed in, plus one user missing from users.dat (user 99)."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    ages = ("1", "18", "25", "35", "45", "50", "56")
    user_lines = [
        f"{u}::{'MF'[u % 2]}::{ages[u % 7]}::{u % 21}::{10000 + 137 * u:05d}"
        for u in range(1, users + 1)
    ]
    movie_lines = []
    for m in range(1, movies + 1):
        genres = "|".join(rng.sample(ML1M_GENRES, 1 + m % 3))
        title = f"Misérables: Part {m} ({1990 + m})" if m % 4 else f"Untitled {m}"
        movie_lines.append(f"{m}::{title}::{genres}")
    valid = []
    for u in [*range(1, users + 1), *([99] if bad else [])]:
        for m in rng.sample(range(1, movies + 1), min(ratings_per_user, movies)):
            if like_rate is None:
                rating = rng.randint(1, 5)
            else:
                rating = rng.choice((4, 5) if rng.random() < like_rate else (1, 2, 3))
            when = start + rng.randrange(spread_s)
            valid.append((str(u), str(m), str(rating), str(when)))
    lines = ["::".join(r) for r in valid]
    if bad:
        for i, (line, _) in enumerate(ML1M_BAD_RATINGS):
            lines.insert(3 + 7 * i, line)
    (root / "users.dat").write_text("\n".join(user_lines) + "\n", encoding="latin-1")
    (root / "movies.dat").write_text("\n".join(movie_lines) + "\n", encoding="latin-1")
    (root / "ratings.dat").write_text("\n".join(lines) + "\n", encoding="latin-1")
    return valid


TD_HEADER = "ip,app,device,os,channel,click_time,attributed_time,is_attributed"
TD_BAD_ROWS = [  # (line, reason)
    ("1,2,3,4,5,2017-11-07 10:00:00,,0,9", "wrong_field_count"),
    ("", "blank_line"),
    ("-1,2,3,4,5,2017-11-07 10:00:00,,0", "bad_value:ip"),
    ("1,app,3,4,5,2017-11-07 10:00:00,,0", "bad_value:app"),
    ("1,2,,4,5,2017-11-07 10:00:00,,0", "bad_value:device"),
    ("1,2,3,4.0,5,2017-11-07 10:00:00,,0", "bad_value:os"),
    ("1,2,3,4,c5,2017-11-07 10:00:00,,0", "bad_value:channel"),
    ("1,2,3,4,5,2017-11-31 10:00:00,,0", "bad_value:click_time"),
    ("1,2,3,4,5,07/11/2017 10:00,,0", "bad_value:click_time"),
    ("1,2,3,4,5,2017-11-07 10:00:00,,2", "bad_value:is_attributed"),
]


def write_talkingdata(
    path: Path,
    *,
    rows: int = 400,
    apps: int = 6,
    channels: int = 5,
    hours: int = 3,
    rate: float = 0.05,
    seed: int = 0,
    bad: bool = True,
) -> list[list[str]]:
    """Write a train.csv-shaped file at ``path``; return its valid rows (fields as strings, file
    order). Two valid rows disagree on attributed_time (kept, noted); with ``bad``, the lines of
    :data:`TD_BAD_ROWS` are mixed in."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    valid = []
    for _ in range(rows):
        second = rng.randrange(hours * 3600)
        when = f"2017-11-07 {second // 3600:02d}:{second % 3600 // 60:02d}:{second % 60:02d}"
        label = int(rng.random() < rate)
        attributed = f"2017-11-08 {second // 3600:02d}:00:00" if label else ""
        ids = [rng.randrange(5000), rng.randrange(apps), rng.randrange(3), rng.randrange(20)]
        channel = 100 + rng.randrange(channels)
        valid.append([*map(str, ids), str(channel), when, attributed, str(label)])
    valid[0][6], valid[0][7] = "2017-11-08 00:00:00", "0"  # a time without the label
    valid[1][6], valid[1][7] = "", "1"  # the label without a time
    lines = [",".join(r) for r in valid]
    if bad:
        for i, (line, _) in enumerate(TD_BAD_ROWS):
            lines.insert(5 + 11 * i, line)
    path.write_text(TD_HEADER + "\n" + "\n".join(lines) + "\n")
    return valid

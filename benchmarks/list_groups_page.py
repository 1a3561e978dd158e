"""GET /groups's query at depth: the first and the last page of 100,000 stored groups, with the page picked before its
groups' items are counted (`repository.list_groups`) and with the count inside the paged select (the query before
the fix, found by benchmarks/scale.py). Its own Postgres database, created and dropped here; never part of the tests.

    .venv/bin/python -m benchmarks.list_groups_page [--groups 100000] [--items 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid

from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from service.db import repository as repo
from service.db.migrate import upgrade_database
from service.db.models import ContextItem, Group
from service.db.session import make_engine, make_sessionmaker, session_scope

ADMIN_URL = os.environ.get("GPO_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def count_in_paged_select(session, tenant: str, limit: int, offset: int) -> list:
    """The query before the fix: the item count is a column of the paged select."""
    rows = session.execute(
        select(Group, select(func.count(ContextItem.id)).where(ContextItem.group_id == Group.id).scalar_subquery())
        .where(Group.tenant == tenant)
        .order_by(Group.name)
        .limit(limit)
        .offset(offset)
    ).all()
    return [(g.name, int(n)) for g, n in rows]


def timed(fn, repeats: int = 5) -> float:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=20)
    args = parser.parse_args()
    name = f"gpo_listpage_{uuid.uuid4().hex[:10]}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade_database(url)
        engine = make_engine(url)
        t0 = time.perf_counter()
        with engine.begin() as c:  # small rows: the count's cost is the number of items, not their size
            c.execute(
                text(
                    "INSERT INTO groups (tenant, name, kind, version) "
                    "SELECT 'default', 'g' || lpad(i::text, 7, '0'), 'choice', 1 FROM generate_series(1, :n) i"
                ),
                {"n": args.groups},
            )
            c.execute(
                text(
                    "INSERT INTO context_items (group_id, position, kind, question, options, distribution) "
                    "SELECT g.id, p, 'choice', 'q' || p, '[\"a\", \"b\"]', '[0.5, 0.5]' "
                    "FROM groups g, generate_series(0, :m - 1) p"
                ),
                {"m": args.items},
            )
            c.execute(text("ANALYZE"))
        print(f"{args.groups:,} groups x {args.items} items loaded in {time.perf_counter() - t0:.1f} s")
        sessions = make_sessionmaker(engine)
        last = args.groups - 100
        with session_scope(sessions) as s:
            fixed = [(i.name, i.size) for i in repo.list_groups(s, "default", 100, last)]
            assert fixed == count_in_paged_select(s, "default", 100, last), "both queries give the same page"
            for label, offset in (("first page", 0), (f"last page (offset {last:,})", last)):
                new = timed(lambda o=offset: repo.list_groups(s, "default", 100, o))
                old = timed(lambda o=offset: count_in_paged_select(s, "default", 100, o))
                print(f"{label:>28}: page picked first {new:7.1f} ms; count in the paged select {old:7.1f} ms")
        engine.dispose()
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()

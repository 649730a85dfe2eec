"""The ledger's schema as numbered migrations: (version, name, SQL). A migration is applied once,
in order, inside the one transaction that applies all pending ones, and recorded in `migrations`
(kiosk.schema). Money is integer cents; times are UTC ISO-8601 text. Append, never edit.
"""

from __future__ import annotations

Migration = tuple[int, str, str]  # (version, name, sql)

MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "coins, credit, vends, sales, stock, cash box, donations, events",
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE credit_sessions (
            id INTEGER PRIMARY KEY,
            opened_at TEXT NOT NULL,
            closed_at TEXT,
            balance_cents INTEGER NOT NULL CHECK (balance_cents >= 0),
            close_reason TEXT
        );
        CREATE UNIQUE INDEX one_open_credit ON credit_sessions ((closed_at IS NULL))
            WHERE closed_at IS NULL;
        CREATE TABLE coins (
            id INTEGER PRIMARY KEY,
            at TEXT NOT NULL,
            session_id INTEGER NOT NULL REFERENCES credit_sessions(id),
            value_cents INTEGER NOT NULL CHECK (value_cents > 0)
        );
        CREATE TABLE stock (
            slot INTEGER PRIMARY KEY,
            product TEXT NOT NULL,
            price_cents INTEGER NOT NULL CHECK (price_cents > 0),
            quantity INTEGER NOT NULL CHECK (quantity >= 0),
            capacity INTEGER NOT NULL CHECK (capacity > 0),
            enabled INTEGER NOT NULL DEFAULT 1,
            fault TEXT,
            needs_recount INTEGER NOT NULL DEFAULT 0
        );
        CREATE TABLE stock_counts (
            id INTEGER PRIMARY KEY,
            at TEXT NOT NULL,
            slot INTEGER NOT NULL REFERENCES stock(slot),
            kind TEXT NOT NULL CHECK (kind IN ('count', 'refill')),
            quantity INTEGER NOT NULL,
            last_sale_id INTEGER NOT NULL,
            actor TEXT NOT NULL
        );
        CREATE TABLE vends (
            id INTEGER PRIMARY KEY,
            session_id INTEGER NOT NULL REFERENCES credit_sessions(id),
            slot INTEGER NOT NULL REFERENCES stock(slot),
            price_cents INTEGER NOT NULL,
            started_at TEXT NOT NULL,
            ended_at TEXT,
            outcome TEXT NOT NULL DEFAULT 'pending',
            detail TEXT
        );
        CREATE TABLE sales (
            id INTEGER PRIMARY KEY,
            at TEXT NOT NULL,
            vend_id INTEGER NOT NULL UNIQUE REFERENCES vends(id),
            session_id INTEGER NOT NULL REFERENCES credit_sessions(id),
            slot INTEGER NOT NULL REFERENCES stock(slot),
            product TEXT NOT NULL,
            price_cents INTEGER NOT NULL CHECK (price_cents > 0)
        );
        CREATE TABLE donations (
            id INTEGER PRIMARY KEY,
            at TEXT NOT NULL,
            session_id INTEGER NOT NULL REFERENCES credit_sessions(id),
            amount_cents INTEGER NOT NULL CHECK (amount_cents > 0),
            beneficiary TEXT NOT NULL
        );
        CREATE TABLE cashbox (
            value_cents INTEGER PRIMARY KEY,
            count INTEGER NOT NULL CHECK (count >= 0)
        );
        CREATE TABLE collections (
            id INTEGER PRIMARY KEY,
            at TEXT NOT NULL,
            last_coin_id INTEGER NOT NULL,
            actor TEXT NOT NULL
        );
        CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            at TEXT NOT NULL,
            kind TEXT NOT NULL,
            slot INTEGER,
            detail TEXT NOT NULL DEFAULT '',
            actor TEXT NOT NULL DEFAULT 'kiosk'
        );
        """,
    ),
    (
        2,
        "coins read from merged pulse trains",
        """
        ALTER TABLE coins ADD COLUMN merged INTEGER NOT NULL DEFAULT 0
        """,
    ),
    (
        3,
        "faults as data, structured events, profile values last applied to each slot",
        """
        CREATE TABLE faults (
            device TEXT NOT NULL,
            code TEXT NOT NULL,
            since TEXT NOT NULL,
            detail TEXT NOT NULL DEFAULT '',
            slot INTEGER,
            PRIMARY KEY (device, code)
        );
        INSERT INTO faults (device, code, since, slot)
            SELECT 'slot_' || slot, fault, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), slot
            FROM stock WHERE fault IS NOT NULL;
        ALTER TABLE stock DROP COLUMN fault;
        ALTER TABLE events ADD COLUMN device TEXT;
        ALTER TABLE events ADD COLUMN code TEXT;
        CREATE TABLE slot_profile (
            slot INTEGER PRIMARY KEY REFERENCES stock(slot),
            product TEXT NOT NULL,
            price_cents INTEGER NOT NULL,
            capacity INTEGER NOT NULL
        );
        INSERT INTO slot_profile SELECT slot, product, price_cents, capacity FROM stock
        """,
    ),
    (
        4,
        "technician service: origins, collections counted, test vends, audit reads",
        """
        ALTER TABLE events ADD COLUMN origin TEXT NOT NULL DEFAULT 'kiosk';
        ALTER TABLE collections ADD COLUMN expected_cents INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE collections ADD COLUMN counted_cents INTEGER;
        ALTER TABLE collections ADD COLUMN origin TEXT NOT NULL DEFAULT 'kiosk';
        CREATE TABLE test_vends (
            id INTEGER PRIMARY KEY,
            slot INTEGER NOT NULL REFERENCES stock(slot),
            started_at TEXT NOT NULL,
            ended_at TEXT,
            outcome TEXT NOT NULL DEFAULT 'pending',
            detail TEXT,
            actor TEXT NOT NULL
        );
        ALTER TABLE stock_counts ADD COLUMN last_test_vend_id INTEGER NOT NULL DEFAULT 0;
        CREATE TABLE audit_reads (
            id INTEGER PRIMARY KEY,
            at TEXT NOT NULL,
            reset INTEGER NOT NULL,
            actor TEXT NOT NULL,
            origin TEXT NOT NULL,
            last_coin_id INTEGER NOT NULL,
            last_sale_id INTEGER NOT NULL,
            last_test_vend_id INTEGER NOT NULL,
            last_event_id INTEGER NOT NULL,
            last_donation_id INTEGER NOT NULL
        )
        """,
    ),
    (
        5,
        "the telemetry outbox and remote commands done",
        """
        CREATE TABLE outbox (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            msg_id TEXT NOT NULL UNIQUE,
            kind TEXT NOT NULL,
            body TEXT NOT NULL,
            at TEXT NOT NULL,
            boot_id TEXT NOT NULL
        );
        CREATE TABLE commands (
            cmd_id TEXT PRIMARY KEY,
            at TEXT NOT NULL,
            name TEXT NOT NULL,
            request TEXT NOT NULL,
            reply TEXT NOT NULL
        )
        """,
    ),
    (
        6,
        "the cash box derived from the coins since the last collection",
        # A count per denomination beside the coins was one more page written with every coin,
        # and a second record of the same fact. Collections made before migration 4 said 0 c:
        # they get what the coins in their range add up to, as later ones recorded it.
        """
        DROP TABLE cashbox;
        UPDATE collections SET expected_cents = coalesce((
            SELECT sum(value_cents) FROM coins
            WHERE id <= collections.last_coin_id AND id > (
                SELECT coalesce(max(p.last_coin_id), 0) FROM collections p
                WHERE p.id < collections.id
            )
        ), 0) WHERE expected_cents = 0
        """,
    ),
]

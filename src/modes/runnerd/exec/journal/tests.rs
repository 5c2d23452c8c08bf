use super::*;
use crate::modes::runnerd::exec::spool::SpoolBudget;
use crate::shared::protocol::runnerd::ExecEvent;
use base64::Engine;

fn budget(total: u64, per_exec: u64, segment: u64) -> Arc<JournalBudget> {
    JournalBudget::new(SpoolBudget::new(
        std::env::temp_dir(),
        total,
        per_exec,
        segment,
    ))
}

/// Appends `text` as stdout; on the wire it is the base64 of `text`.
fn out(journal: &Journal, text: &str) -> u64 {
    journal.append_output(
        OutputStream::Stdout,
        Bytes::copy_from_slice(text.as_bytes()),
    )
}

fn parse(batch: &[u8], events: &mut Vec<ExecEvent>) {
    for line in batch.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        events.push(serde_json::from_slice(line).unwrap());
    }
}

async fn read_all(cursor: &mut JournalCursor) -> Vec<ExecEvent> {
    let mut events = Vec::new();
    while let Some(batch) = cursor.next_batch(4096).await {
        parse(&batch, &mut events);
    }
    events
}

fn payloads(events: &[ExecEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e {
            ExecEvent::Stdout { b64, seq } => {
                let text = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .unwrap();
                format!("{seq}:{}", String::from_utf8(text).unwrap())
            }
            ExecEvent::Gap { from_seq, to_seq } => format!("gap {from_seq}-{to_seq}"),
            other => format!("{other:?}"),
        })
        .collect()
}

/// Appends like [`out`], then waits for room as a pump would (so the tail stays at its cap).
async fn out_paced(journal: &Journal, text: &str) -> u64 {
    let seq = out(journal, text);
    journal.wait_for_room().await;
    seq
}

/// Polls `check` until it holds (the spool writer is another thread).
async fn eventually(mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !check() {
        assert!(std::time::Instant::now() < deadline, "condition never held");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A cursor from any seq sees every later event exactly once, whether it sits in memory or on disk.
#[tokio::test]
async fn replay_from_any_seq_is_lossless_across_memory_and_disk() {
    let budget = budget(u64::MAX, u64::MAX, 2048);
    let journal = Journal::new(&budget, 512);
    for i in 1..=200 {
        out_paced(&journal, &format!("chunk-{i:04}")).await;
    }
    journal.finish();
    assert!(budget.spool.used_bytes() > 0, "most lines went to disk");
    for since in [0u64, 1, 57, 150, 199, 200] {
        let events = read_all(&mut journal.cursor(since)).await;
        let want: Vec<String> = (since + 1..=200)
            .map(|i| format!("{i}:chunk-{i:04}"))
            .collect();
        assert_eq!(payloads(&events), want, "since {since}");
    }
}

/// A live cursor waits for appends and ends when the journal finishes.
#[tokio::test]
async fn cursor_follows_live_appends() {
    let budget = budget(u64::MAX, u64::MAX, 1 << 20);
    let journal = Journal::new(&budget, 1 << 20);
    let mut cursor = journal.cursor(0);
    let writer = {
        let journal = journal.clone();
        tokio::spawn(async move {
            for i in 1..=50 {
                out(&journal, &i.to_string());
                tokio::task::yield_now().await;
            }
            journal.finish();
        })
    };
    let events = read_all(&mut cursor).await;
    writer.await.unwrap();
    assert_eq!(events.len(), 50);
    assert_eq!(events.last().unwrap().seq(), Some(50));
}

/// Past the per-exec spool cap, a lagging reader gets one gap naming exactly the lost range.
#[tokio::test]
async fn eviction_shows_as_an_explicit_gap() {
    let budget = budget(u64::MAX, 1024, 256);
    let journal = Journal::new(&budget, 256);
    for i in 1..=300 {
        out_paced(&journal, &format!("{i:08}")).await;
        assert!(budget.spool.used_bytes() <= 1024);
    }
    journal.finish();
    let events = read_all(&mut journal.cursor(0)).await;
    let ExecEvent::Gap { from_seq, to_seq } = events[0] else {
        panic!("first event should be a gap: {:?}", events[0]);
    };
    assert_eq!(from_seq, 1);
    assert_eq!(events[1].seq(), Some(to_seq + 1));
    let seqs: Vec<u64> = events[1..].iter().filter_map(ExecEvent::seq).collect();
    assert_eq!(
        seqs,
        (to_seq + 1..=300).collect::<Vec<_>>(),
        "contiguous after the gap"
    );
}

/// The daemon-wide cap takes spool space from finished journals before live ones.
#[tokio::test]
async fn total_budget_evicts_finished_journals_first() {
    let budget = budget(4096, u64::MAX, 512);
    let finished = Journal::new(&budget, 128);
    for i in 0..100 {
        out_paced(&finished, &format!("old-{i:04}-{}", "x".repeat(40))).await;
    }
    finished.finish();
    let live = Journal::new(&budget, 128);
    for i in 0..60 {
        out_paced(&live, &format!("new-{i:04}")).await;
    }
    assert!(budget.spool.used_bytes() <= 4096);
    let live_events = read_all(&mut {
        live.finish();
        live.cursor(0)
    })
    .await;
    assert!(
        !matches!(live_events[0], ExecEvent::Gap { .. }),
        "the live journal kept its spool"
    );
    let old_events = read_all(&mut finished.cursor(0)).await;
    assert!(matches!(old_events[0], ExecEvent::Gap { .. }));
}

/// Dropping a journal returns its spool bytes to the budget.
#[test]
fn dropping_a_journal_refunds_its_spool() {
    let budget = budget(u64::MAX, u64::MAX, 512);
    let journal = Journal::new(&budget, 64);
    for i in 0..50 {
        out(&journal, &format!("x{i}"));
    }
    assert!(budget.spool.used_bytes() > 0);
    drop(journal);
    // The writer thread may hold the journal for a moment while it reports a batch.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while budget.spool.used_bytes() != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the spool was never refunded"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Appends `count` records the way a pump does (waiting for room before each), then finishes.
fn produce(journal: &Arc<Journal>, count: u32) -> tokio::task::JoinHandle<()> {
    let journal = journal.clone();
    tokio::spawn(async move {
        for i in 1..=count {
            journal.wait_for_room().await;
            out(&journal, &format!("{i:08}"));
            tokio::task::yield_now().await;
        }
        journal.finish();
    })
}

/// A reader far slower than its producer gets every record with no gap: past the per-exec spool
/// cap the producer waits for it instead of evicting, and the spool never passes its cap.
#[tokio::test]
async fn a_reader_that_keeps_reading_loses_nothing() {
    let budget = budget(u64::MAX, 1024, 256);
    let journal = Journal::new(&budget, 256);
    let mut cursor = journal.cursor(0);
    let producer = produce(&journal, 600);
    let mut events = Vec::new();
    while let Some(batch) = cursor.next_batch(64).await {
        parse(&batch, &mut events);
        assert!(budget.spool.used_bytes() <= 1024);
        // Slower than the producer: a few turns of the runtime per small batch.
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
    }
    producer.await.unwrap();
    let want: Vec<String> = (1..=600u32).map(|i| format!("{i}:{i:08}")).collect();
    assert_eq!(payloads(&events), want);
}

/// With a reader holding the journal at its per-exec cap, the pumps get no room; reading frees it.
#[tokio::test]
async fn a_full_journal_has_no_room_until_its_reader_moves() {
    let budget = budget(u64::MAX, 1024, 256);
    let journal = Journal::new(&budget, 256);
    let mut cursor = journal.cursor(0);
    let mut seq = 0;
    while journal.relieve() == Room::Yes {
        seq = out(&journal, &format!("{:08}", seq + 1));
        assert!(seq < 10_000, "the journal never filled");
        eventually(|| journal.lock().queued_count == 0).await;
    }
    assert!(budget.spool.used_bytes() <= 1024);
    let mut events = Vec::new();
    while journal.relieve() != Room::Yes {
        parse(&cursor.next_batch(256).await.unwrap(), &mut events);
        eventually(|| journal.lock().queued_count == 0).await;
    }
    assert!(!events.iter().any(|e| matches!(e, ExecEvent::Gap { .. })));
    assert_eq!(events[0].seq(), Some(1));
}

/// A reader that consumes nothing for the stall window stops holding the producer back; when it
/// reads again it gets an explicit gap, then everything after it.
#[tokio::test(start_paused = true)]
async fn a_stalled_reader_stops_holding_after_the_window() {
    let window = Duration::from_secs(30);
    let budget = JournalBudget::with_stall_window(
        SpoolBudget::new(std::env::temp_dir(), u64::MAX, 1024, 256),
        window,
    );
    let journal = Journal::new(&budget, 256);
    let mut stalled = journal.cursor(0);
    let started = Instant::now();
    let producer = produce(&journal, 600);
    assert!(stalled.next_batch(64).await.is_some());
    producer.await.unwrap();
    assert!(
        started.elapsed() >= window,
        "the producer was held until the window passed"
    );
    let events = read_all(&mut stalled).await;
    assert!(events.iter().any(|e| matches!(e, ExecEvent::Gap { .. })));
    assert_eq!(events.last().unwrap().seq(), Some(600));
}

/// The daemon-wide cap holds with several journals whose readers lag: a producer waits while the
/// budget is full of bytes readers still need, and every reader still gets everything.
#[tokio::test]
async fn shared_budget_blocks_instead_of_evicting_held_bytes() {
    let budget = budget(2048, 1536, 256);
    let journals: Vec<Arc<Journal>> = (0..3).map(|_| Journal::new(&budget, 256)).collect();
    let mut cursors: Vec<JournalCursor> = journals.iter().map(|j| j.cursor(0)).collect();
    let producers: Vec<_> = journals.iter().map(|j| produce(j, 400)).collect();
    let mut events: Vec<Vec<ExecEvent>> = vec![Vec::new(); 3];
    let mut done = [false; 3];
    while !done.iter().all(|d| *d) {
        for (i, cursor) in cursors.iter_mut().enumerate() {
            if done[i] {
                continue;
            }
            match cursor.next_batch(64).await {
                Some(batch) => parse(&batch, &mut events[i]),
                None => done[i] = true,
            }
            assert!(budget.spool.used_bytes() <= 2048);
        }
        tokio::task::yield_now().await;
    }
    for producer in producers {
        producer.await.unwrap();
    }
    let want: Vec<String> = (1..=400u32).map(|i| format!("{i}:{i:08}")).collect();
    for got in &events {
        assert_eq!(payloads(got), want);
    }
}

/// The drain grace does not count time the journal held its pumps back.
#[tokio::test(start_paused = true)]
async fn drain_grace_excludes_time_held_back() {
    let budget = budget(u64::MAX, u64::MAX, 1 << 20);
    let journal = Journal::new(&budget, 1 << 20);
    let grace = Duration::from_secs(2);
    journal.lock().pressure.waits(Instant::now());
    let held = {
        let journal = journal.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            journal.lock().pressure.keeps_up(Instant::now());
        })
    };
    let drained = journal
        .within_drain_grace(grace, tokio::time::sleep(Duration::from_secs(6)))
        .await;
    assert!(
        drained.is_some(),
        "5 s held back + 1 s within the 2 s grace"
    );
    held.await.unwrap();
    let drained = journal
        .within_drain_grace(grace, tokio::time::sleep(Duration::from_secs(3)))
        .await;
    assert!(drained.is_none(), "nothing held back: the grace is 2 s");
}

/// The drain grace does not run while a reader that keeps reading has output still to receive.
#[tokio::test(start_paused = true)]
async fn drain_grace_waits_for_readers_behind() {
    let budget = budget(u64::MAX, u64::MAX, 1 << 20);
    let journal = Journal::new(&budget, 1 << 20);
    let mut cursor = journal.cursor(0);
    out(&journal, "first");
    let drained = journal
        .within_drain_grace(
            Duration::from_secs(2),
            tokio::time::sleep(Duration::from_secs(10)),
        )
        .await;
    assert!(
        drained.is_some(),
        "the reader is behind (within its stall window)"
    );
    assert!(cursor.next_batch(1024).await.is_some());
    let drained = journal
        .within_drain_grace(
            Duration::from_secs(2),
            tokio::time::sleep(Duration::from_secs(3)),
        )
        .await;
    assert!(drained.is_none(), "caught up: the grace runs");
}

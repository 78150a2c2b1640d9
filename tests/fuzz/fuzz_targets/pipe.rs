//! Fuzz target: the pipe's pure decisions (`callrelay::server::pipe::decide`),
//! asked directly with arbitrary views, pieces, senders and soft limits.
//!
//! Part 1 checks each function against the invariants decide.rs documents
//! (and their agreement with each other: what `decide` forwards,
//! `placement` writes; what it holds, `placement` holds).
//!
//! Part 2 is a small model of one receiver fed by three senders and the
//! server: every step asks the real decision functions and carries the
//! answer out the way `pipe/mod.rs` does (cut-through, held frames, waits
//! and wakes, runs, padding for a vanished sender). The receiver's output
//! must stay a sequence of whole frames (no frame ever starts inside
//! another, so held frames go out only after the owner's frame ends), FILE
//! bytes are never lost, and once every sender finishes and the receiver
//! drains, nothing is left stuck (no frame in progress, nothing held,
//! nobody paused).
#![no_main]

use std::collections::{HashMap, VecDeque};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use callrelay::ids::ConnId;
use callrelay::protocol::Framing;
use callrelay::protocol::parser::BodyKind;
use callrelay::server::pipe::decide::{
    Decision, DropWhy, InboundView, Piece, Placement, ReceiverView, STALL_MIN_PROGRESS,
    StallVerdict, Wake, decide, padding_chunk, placement, producer_waits, stall_verdict,
    takes_media_runs, wake,
};
use callrelay::server::pipe::state::StallWindow;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

fn conn(slot: u32, generation: u32) -> ConnId {
    ConnId { slot, generation }
}

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

// ---------------------------------------------------------------- part 1

/// A sender among a few slots and two generations (a stale generation of
/// the same slot is another connection).
fn any_conn(u: &mut Unstructured<'_>) -> Result<ConnId> {
    Ok(conn(u.int_in_range(0..=3)?, u.int_in_range(1..=2)?))
}

/// Sizes around interesting points; bounded so sums never overflow.
fn any_size(u: &mut Unstructured<'_>, soft: usize) -> Result<usize> {
    Ok(match u.int_in_range(0..=3)? {
        0 => 0,
        1 => soft.saturating_add(u.int_in_range(0..=2)?).saturating_sub(1),
        2 => u.int_in_range(0..=u16::MAX as usize)?,
        _ => u.arbitrary::<u32>()? as usize,
    })
}

fn any_soft(u: &mut Unstructured<'_>) -> Result<usize> {
    Ok(match u.int_in_range(0..=3)? {
        0 => u.int_in_range(0..=2)?,
        1 => u.int_in_range(0..=4096)?,
        2 => u.arbitrary::<u32>()? as usize,
        _ => callrelay::config::DEFAULT_OUTPUT_SOFT,
    })
}

fn any_view(u: &mut Unstructured<'_>, soft: usize) -> Result<ReceiverView> {
    let inbound = match u.int_in_range(0..=2)? {
        0 => InboundView::Idle,
        1 => InboundView::From(any_conn(u)?),
        _ => InboundView::Padding,
    };
    Ok(ReceiverView {
        queued: any_size(u, soft)?,
        held: any_size(u, soft)?,
        inbound,
        framing: if u.arbitrary()? { Framing::LengthPrefixed } else { Framing::Seed },
    })
}

fn any_piece(u: &mut Unstructured<'_>) -> Result<Piece> {
    let kind = if u.arbitrary()? { BodyKind::File } else { BodyKind::Media };
    Ok(match u.int_in_range(0..=2)? {
        0 => Piece::MediaFrame { complete: u.arbitrary()? },
        1 => Piece::FileFrame,
        _ => Piece::BodyRest { kind },
    })
}

fn check_view(view: &ReceiverView, sender: ConnId, other: ConnId) {
    // busy_for: only the frame's own sender may write during a frame.
    match view.inbound {
        InboundView::Idle => {
            assert!(!view.busy_for(Some(sender)) && !view.busy_for(None));
        }
        InboundView::From(owner) => {
            assert!(!view.busy_for(Some(owner)));
            assert_eq!(view.busy_for(Some(sender)), sender != owner);
            assert!(view.busy_for(None), "a server frame inside {owner}'s frame");
            // The frame's owner has the least ahead of it.
            assert!(view.ahead_of(Some(owner)) <= view.ahead_of(Some(other)));
            assert!(view.ahead_of(Some(owner)) <= view.ahead_of(None));
        }
        InboundView::Padding => {
            assert!(view.busy_for(Some(sender)) && view.busy_for(None));
        }
    }
    for who in [Some(sender), Some(other), None] {
        let ahead = view.ahead_of(who);
        assert!(ahead >= view.queued && ahead <= view.queued + view.held);
        // placement: held exactly when busy, and server frames are never
        // written inline.
        let place = placement(who, view);
        assert_eq!(place == Placement::Hold, view.busy_for(who), "{place:?} for {who:?} in {view:?}");
        if who.is_none() {
            assert_ne!(place, Placement::Write, "a server frame written inline");
        }
    }
}

fn check_decide(piece: Piece, sender: ConnId, view: Option<&ReceiverView>, soft: usize) {
    let decision = decide(piece, sender, view, soft);
    let Some(view) = view else {
        assert_eq!(decision, Decision::Drop(DropWhy::NoReceiver), "{piece:?} to nobody");
        return;
    };
    let full = view.ahead_of(Some(sender)) >= soft;
    let busy = view.busy_for(Some(sender));
    let why = format!("{piece:?} from {sender} into {view:?} (soft {soft}): {decision:?}");
    match decision {
        Decision::Forward => {
            assert!(!busy, "forwarded inside another sender's frame: {why}");
            assert_eq!(placement(Some(sender), view), Placement::Write, "{why}");
        }
        Decision::Hold => {
            assert!(busy, "held with nothing to wait for: {why}");
            assert_eq!(piece, Piece::MediaFrame { complete: true }, "only whole media is held: {why}");
            assert_eq!(placement(Some(sender), view), Placement::Hold, "{why}");
        }
        Decision::Wait => {
            assert!(
                busy || (full && matches!(piece, Piece::FileFrame | Piece::BodyRest { kind: BodyKind::File })),
                "waits for nothing: {why}"
            );
            assert!(
                !matches!(piece, Piece::BodyRest { kind: BodyKind::Media }),
                "a started media frame waits: {why}"
            );
        }
        Decision::Drop(DropWhy::SoftLimit) => {
            assert!(matches!(piece, Piece::MediaFrame { .. }), "dropped past the start of a frame: {why}");
            assert!(full, "dropped under the soft limit: {why}");
        }
        Decision::Drop(DropWhy::NoReceiver) => {
            // With a receiver, only a body whose receiver changed hands.
            assert!(matches!(piece, Piece::BodyRest { .. }) && busy, "{why}");
        }
    }
    match piece {
        // FILE is never dropped while a receiver exists (a body's rest
        // only when its receiver changed hands, above).
        Piece::FileFrame => assert!(!matches!(decision, Decision::Drop(_)), "{why}"),
        Piece::MediaFrame { complete } if busy && !full => {
            let expect = if complete { Decision::Hold } else { Decision::Wait };
            assert_eq!(decision, expect, "{why}");
        }
        // A started body to its own receiver always goes on (FILE may wait).
        Piece::BodyRest { kind: BodyKind::Media } if !busy => assert_eq!(decision, Decision::Forward, "{why}"),
        Piece::BodyRest { kind: BodyKind::File } if !busy => {
            let expect = if full { Decision::Wait } else { Decision::Forward };
            assert_eq!(decision, expect, "{why}");
        }
        _ => {}
    }
}

fn check_runs(sender: ConnId, view: Option<&ReceiverView>, soft: usize) {
    if !takes_media_runs(sender, view, soft) {
        return;
    }
    let view = view.expect("runs to nobody");
    assert!(!view.busy_for(Some(sender)), "runs inside another frame: {view:?}");
    assert_eq!(view.held, 0, "runs past held frames: {view:?}");
    assert_eq!(view.framing, Framing::LengthPrefixed, "runs to a seed receiver");
    assert!(view.ahead_of(Some(sender)) < soft, "runs over the soft limit");
    // What a run carries, the piece-by-piece path would forward too.
    for complete in [true, false] {
        assert_eq!(decide(Piece::MediaFrame { complete }, sender, Some(view), soft), Decision::Forward);
    }
    assert_eq!(placement(Some(sender), view), Placement::Write);
}

fn check_wake(view: &ReceiverView, soft: usize) {
    let woken = wake(view, soft);
    match (view.inbound, woken) {
        (InboundView::Padding, w) => assert_eq!(w, Wake::Nobody, "woke someone for padding"),
        (InboundView::From(owner), Wake::Owner(who)) => {
            assert_eq!(who, owner);
            assert!(view.ahead_of(Some(owner)) < soft);
        }
        (InboundView::From(_), Wake::All) => panic!("woke everyone inside a frame: {view:?}"),
        (InboundView::Idle, Wake::Owner(_)) => panic!("woke an owner with no frame: {view:?}"),
        (InboundView::Idle, Wake::All) => assert!(view.ahead_of(None) < soft),
        (InboundView::Idle, Wake::Nobody) => assert!(view.ahead_of(None) >= soft),
        (InboundView::From(owner), Wake::Nobody) => assert!(view.ahead_of(Some(owner)) >= soft),
    }
}

fn check_producer(producer: ConnId, view: &ReceiverView, soft: usize) {
    let waits = producer_waits(producer, view, soft);
    assert_eq!(waits, view.held > 0 && view.ahead_of(Some(producer)) >= soft, "{view:?}");
}

fn check_stall(u: &mut Unstructured<'_>) -> Result<()> {
    let ms = |u: &mut Unstructured<'_>| -> Result<Duration> { Ok(Duration::from_millis(u.int_in_range(0..=20_000)?)) };
    let armed = base() + ms(u)?;
    let window = if u.arbitrary()? {
        let start = if u.arbitrary()? { armed } else { base() + ms(u)? };
        let moved = match u.int_in_range(0..=2)? {
            0 => STALL_MIN_PROGRESS - 1,
            1 => STALL_MIN_PROGRESS,
            _ => u.arbitrary::<u32>()?.into(),
        };
        Some(StallWindow { start, moved })
    } else {
        None
    };
    let waits: bool = u.arbitrary()?;
    let now = base() + ms(u)?;
    let stall = ms(u)?;
    let verdict = stall_verdict(armed, window, waits, now, stall);
    let why = format!("{window:?} armed {:?} now {:?} stall {stall:?} waits {waits}: {verdict:?}",
        armed - base(), now - base());
    match window {
        Some(w) if w.start == armed && now >= w.start + stall => {
            let expect = if w.moved >= STALL_MIN_PROGRESS || waits {
                StallVerdict::NewWindow
            } else {
                StallVerdict::CloseOwner
            };
            assert_eq!(verdict, expect, "{why}");
        }
        _ => assert_eq!(verdict, StallVerdict::Stale, "{why}"),
    }
    Ok(())
}

fn check_padding(u: &mut Unstructured<'_>, soft: usize) -> Result<()> {
    let remaining: u64 = match u.int_in_range(0..=2)? {
        0 => u.int_in_range(0..=64)?,
        1 => u64::MAX - u.int_in_range(0..=1)?,
        _ => u.arbitrary()?,
    };
    let queued = any_size(u, soft)?;
    let chunk = u.int_in_range(1..=64 * 1024)?;
    let n = padding_chunk(remaining, queued, soft, chunk);
    assert!(n <= chunk && n as u64 <= remaining, "padding {n} of {remaining} (chunk {chunk})");
    if queued >= soft {
        assert_eq!(n, 0, "padding past the soft limit");
    } else if remaining > 0 {
        assert!(n > 0, "padding makes no progress under the soft limit");
    }
    Ok(())
}

fn single(u: &mut Unstructured<'_>) -> Result<()> {
    let soft = any_soft(u)?;
    let view = any_view(u, soft)?;
    let sender = any_conn(u)?;
    let other = any_conn(u)?;
    let receiver = if u.ratio(1, 8)? { None } else { Some(&view) };
    check_view(&view, sender, other);
    check_decide(any_piece(u)?, sender, receiver, soft);
    check_runs(sender, receiver, soft);
    check_wake(&view, soft);
    check_producer(sender, &view, soft);
    check_stall(u)?;
    check_padding(u, soft)?;
    Ok(())
}

// ---------------------------------------------------------------- part 2

const SENDERS: usize = 3;
/// Zeros written at a time when padding (small, so padding takes rounds).
const PAD: usize = 16;

/// A piece of the receiver's output stream: `len` bytes of frame `frame`,
/// `ends` when they complete it.
#[derive(Clone, Copy, Debug)]
struct Chunk {
    frame: usize,
    len: usize,
    ends: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Inbound {
    Idle,
    From(usize),
    /// The vanished owner's frame `frame` is owed `remaining` zeros.
    Padding { frame: usize, remaining: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Out {
    Boundary,
    /// Cutting frame `frame` through into the receiver.
    Body { frame: usize, kind: BodyKind, remaining: u64 },
    /// Reading and dropping a dropped media frame's rest.
    Discard { remaining: u64 },
}

/// A piece a sender could not hand over yet (Wait): retried when woken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    Media { len: u64, in_hand: u64 },
    File { len: u64 },
    Body { len: u64 },
}

#[derive(Debug)]
struct Sender {
    id: ConnId,
    out: Out,
    paused: bool,
    pending: Option<Pending>,
}

#[derive(Debug)]
struct Model {
    soft: usize,
    framing: Framing,
    senders: Vec<Sender>,
    queue: VecDeque<Chunk>,
    held: Vec<Chunk>,
    inbound: Inbound,
    waiters: Vec<usize>,
    woken: VecDeque<usize>,
    /// The frame the receiver's stream is inside of (appended, not yet complete).
    open: Option<usize>,
    next_frame: usize,
    /// FILE frames: bytes still to reach the queue.
    file_owed: HashMap<usize, u64>,
}

impl Model {
    fn new(soft: usize, framing: Framing) -> Model {
        let senders = (0..SENDERS)
            .map(|i| Sender { id: conn(i as u32 + 1, 1), out: Out::Boundary, paused: false, pending: None })
            .collect();
        Model {
            soft,
            framing,
            senders,
            queue: VecDeque::new(),
            held: Vec::new(),
            inbound: Inbound::Idle,
            waiters: Vec::new(),
            woken: VecDeque::new(),
            open: None,
            next_frame: 0,
            file_owed: HashMap::new(),
        }
    }

    fn view(&self) -> ReceiverView {
        ReceiverView {
            queued: self.queue.iter().map(|c| c.len).sum(),
            held: self.held.iter().map(|c| c.len).sum(),
            inbound: match self.inbound {
                Inbound::Idle => InboundView::Idle,
                Inbound::From(s) => InboundView::From(self.senders[s].id),
                Inbound::Padding { .. } => InboundView::Padding,
            },
            framing: self.framing,
        }
    }

    fn frame(&mut self) -> usize {
        self.next_frame += 1;
        self.next_frame
    }

    /// Appends to the receiver's stream: the one check that matters. A
    /// chunk of another frame while one is open would corrupt the stream.
    fn append(&mut self, chunk: Chunk) {
        if let Some(open) = self.open {
            assert_eq!(chunk.frame, open, "frame {} lands inside frame {open}: {self:#?}", chunk.frame);
        }
        self.open = (!chunk.ends).then_some(chunk.frame);
        if let Some(owed) = self.file_owed.get_mut(&chunk.frame) {
            *owed -= chunk.len as u64;
            if *owed == 0 {
                self.file_owed.remove(&chunk.frame);
            }
        }
        if chunk.len > 0 || chunk.ends {
            self.queue.push_back(chunk);
        }
    }

    /// Where a piece from `from` (None: the server) goes, as write_piece.
    fn place(&mut self, from: Option<usize>, chunk: Chunk) -> Placement {
        let view = self.view();
        let place = placement(from.map(|s| self.senders[s].id), &view);
        match place {
            Placement::Hold => {
                assert!(chunk.ends, "a partial frame held");
                assert_ne!(self.inbound, Inbound::Idle, "held with no frame in progress");
                self.held.push(chunk);
            }
            Placement::Write | Placement::Queue => self.append(chunk),
        }
        place
    }

    /// begin_body / start_inbound.
    fn start_inbound(&mut self, s: usize) {
        match self.inbound {
            Inbound::From(owner) if owner == s => {}
            Inbound::Idle => self.inbound = Inbound::From(s),
            other => panic!("{s} starts a frame while {other:?} is in progress"),
        }
    }

    /// end_inbound: the held frames go out, everyone waiting may go on.
    fn end_inbound(&mut self) {
        self.inbound = Inbound::Idle;
        for chunk in std::mem::take(&mut self.held) {
            self.append(chunk);
        }
        self.wake(Wake::All);
    }

    fn wake(&mut self, wake: Wake) {
        let woken: Vec<usize> = match wake {
            Wake::Nobody => return,
            Wake::All => std::mem::take(&mut self.waiters),
            Wake::Owner(owner) => {
                let Some(at) = self.waiters.iter().position(|&w| self.senders[w].id == owner) else {
                    return;
                };
                vec![self.waiters.swap_remove(at)]
            }
        };
        for s in woken {
            if self.senders[s].paused {
                self.senders[s].paused = false;
                self.woken.push_back(s);
            }
        }
    }

    fn pause(&mut self, s: usize, pending: Option<Pending>) {
        self.senders[s].paused = true;
        self.senders[s].pending = pending;
        if !self.waiters.contains(&s) {
            self.waiters.push(s);
        }
    }

    /// A media frame of `len` payload bytes starts, `in_hand` of them here.
    fn media(&mut self, s: usize, len: u64, in_hand: u64) {
        let complete = in_hand == len;
        let view = self.view();
        let id = self.senders[s].id;
        match decide(Piece::MediaFrame { complete }, id, Some(&view), self.soft) {
            Decision::Wait => self.pause(s, Some(Pending::Media { len, in_hand })),
            Decision::Forward | Decision::Hold => {
                let frame = self.frame();
                let chunk = Chunk { frame, len: 5 + in_hand as usize, ends: complete };
                if self.place(Some(s), chunk) == Placement::Hold {
                    // wait_behind_held
                    if producer_waits(id, &self.view(), self.soft) {
                        self.pause(s, None);
                    }
                }
                if !complete {
                    self.senders[s].out = Out::Body { frame, kind: BodyKind::Media, remaining: len - in_hand };
                    self.start_inbound(s);
                }
            }
            Decision::Drop(why) => {
                assert_eq!(why, DropWhy::SoftLimit);
                if !complete {
                    self.senders[s].out = Out::Discard { remaining: len - in_hand };
                }
            }
        }
    }

    fn file(&mut self, s: usize, len: u64) {
        let view = self.view();
        match decide(Piece::FileFrame, self.senders[s].id, Some(&view), self.soft) {
            Decision::Wait => self.pause(s, Some(Pending::File { len })),
            Decision::Forward => {
                let frame = self.frame();
                self.file_owed.insert(frame, 8 + len);
                let place = self.place(Some(s), Chunk { frame, len: 8, ends: len == 0 });
                assert_eq!(place, Placement::Write, "FILE header not written");
                if len > 0 {
                    self.senders[s].out = Out::Body { frame, kind: BodyKind::File, remaining: len };
                    self.start_inbound(s);
                }
            }
            other => panic!("FILE header to a live receiver: {other:?}"),
        }
    }

    fn body(&mut self, s: usize, len: u64) {
        match self.senders[s].out {
            Out::Boundary => {}
            Out::Discard { remaining } => {
                let left = remaining - len.min(remaining);
                self.senders[s].out = if left == 0 { Out::Boundary } else { Out::Discard { remaining: left } };
            }
            Out::Body { frame, kind, remaining } => {
                let take = len.clamp(1, remaining);
                let view = self.view();
                match decide(Piece::BodyRest { kind }, self.senders[s].id, Some(&view), self.soft) {
                    Decision::Wait => {
                        assert_eq!(kind, BodyKind::File, "a started media frame waits");
                        self.pause(s, Some(Pending::Body { len: take }));
                    }
                    Decision::Forward => {
                        let last = take == remaining;
                        let place = self.place(Some(s), Chunk { frame, len: take as usize, ends: last });
                        assert_eq!(place, Placement::Write, "a body's rest not written");
                        if last {
                            self.senders[s].out = Out::Boundary;
                            if self.inbound == Inbound::From(s) {
                                self.end_inbound();
                            }
                        } else {
                            self.senders[s].out = Out::Body { frame, kind, remaining: remaining - take };
                        }
                    }
                    // The receiver never changes hands here.
                    other => panic!("body rest of frame {frame} to its own receiver: {other:?}"),
                }
            }
        }
    }

    /// A run: the rest of the frame in progress, `whole` complete frames of
    /// `size` payload bytes, and the start of one more if `started > 0`.
    fn run(&mut self, s: usize, whole: u8, size: u64, started: u64) {
        if !takes_media_runs(self.senders[s].id, Some(&self.view()), self.soft) {
            return;
        }
        match self.senders[s].out {
            Out::Body { frame, kind: BodyKind::Media, remaining } => {
                self.senders[s].out = Out::Boundary;
                let place = self.place(Some(s), Chunk { frame, len: remaining as usize, ends: true });
                assert_eq!(place, Placement::Write);
            }
            Out::Boundary => {}
            _ => return,
        }
        for _ in 0..whole {
            let frame = self.frame();
            assert_eq!(self.place(Some(s), Chunk { frame, len: 5 + size as usize, ends: true }), Placement::Write);
        }
        if started > 0 {
            let frame = self.frame();
            assert_eq!(self.place(Some(s), Chunk { frame, len: 5, ends: false }), Placement::Write);
            self.senders[s].out = Out::Body { frame, kind: BodyKind::Media, remaining: started };
            self.start_inbound(s);
        } else if self.inbound == Inbound::From(s) {
            self.end_inbound();
        }
    }

    /// A frame the server builds (a relayed TEXT, a call event), produced
    /// by `producer`'s input when there is one.
    fn server_frame(&mut self, producer: Option<usize>, len: usize) {
        let frame = self.frame();
        if self.place(None, Chunk { frame, len, ends: true }) == Placement::Hold
            && let Some(p) = producer
            && producer_waits(self.senders[p].id, &self.view(), self.soft)
        {
            self.pause(p, None);
        }
    }

    /// The receiver's socket takes `n` bytes; after_drain.
    fn drain(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.queue.front_mut() else {
                break;
            };
            let take = n.min(front.len);
            front.len -= take;
            n -= take;
            if front.len == 0 {
                self.queue.pop_front();
            }
        }
        if matches!(self.inbound, Inbound::Padding { .. }) {
            self.refill_padding();
        }
        if !self.waiters.is_empty() {
            let view = self.view();
            let woken = wake(&view, self.soft);
            match (self.inbound, woken) {
                (Inbound::Padding { .. }, w) => assert_eq!(w, Wake::Nobody),
                (Inbound::From(owner), Wake::Owner(id)) => assert_eq!(id, self.senders[owner].id),
                (Inbound::From(_), Wake::All) => panic!("everyone woken inside a frame"),
                (Inbound::Idle, Wake::Owner(_)) => panic!("an owner woken with no frame"),
                _ => {}
            }
            self.wake(woken);
        }
    }

    /// Sender `s` vanishes (closes, or is closed for stalling): a frame it
    /// was cutting through is padded; it comes back as a new connection.
    fn vanish(&mut self, s: usize) {
        if let Out::Body { frame, remaining, .. } = self.senders[s].out
            && self.inbound == Inbound::From(s)
        {
            self.inbound = Inbound::Padding { frame, remaining };
            self.file_owed.remove(&frame);
            self.refill_padding();
        }
        self.waiters.retain(|&w| w != s);
        self.woken.retain(|&w| w != s);
        let id = self.senders[s].id;
        self.senders[s] = Sender { id: conn(id.slot, id.generation + 1), out: Out::Boundary, paused: false, pending: None };
    }

    fn refill_padding(&mut self) {
        loop {
            let Inbound::Padding { frame, remaining } = self.inbound else {
                return;
            };
            if remaining == 0 {
                break;
            }
            let queued = self.view().queued;
            let chunk = padding_chunk(remaining, queued, self.soft, PAD);
            if chunk == 0 {
                return;
            }
            assert!(queued < self.soft, "padding past the soft limit");
            let left = remaining - chunk as u64;
            self.inbound = Inbound::Padding { frame, remaining: left };
            self.append(Chunk { frame, len: chunk, ends: left == 0 });
        }
        self.end_inbound();
    }

    /// Woken senders try their waiting piece again.
    fn settle(&mut self) {
        for _ in 0..1000 {
            let Some(s) = self.woken.pop_front() else {
                return;
            };
            if self.senders[s].paused {
                continue;
            }
            match self.senders[s].pending.take() {
                Some(Pending::Media { len, in_hand }) => self.media(s, len, in_hand),
                Some(Pending::File { len }) => self.file(s, len),
                Some(Pending::Body { len }) => self.body(s, len),
                None => {}
            }
        }
        panic!("wakes do not settle");
    }

    fn step(&mut self, u: &mut Unstructured<'_>) -> Result<()> {
        let s = u.int_in_range(0..=SENDERS - 1)?;
        let op = u.int_in_range(0..=8)?;
        let free = !self.senders[s].paused && self.senders[s].pending.is_none();
        let at_boundary = self.senders[s].out == Out::Boundary;
        match op {
            0 if free && at_boundary => {
                let len = u.int_in_range(0..=48)?;
                let in_hand = u.int_in_range(0..=len)?;
                self.media(s, len, in_hand);
            }
            1 if free && at_boundary => {
                let len = u.int_in_range(0..=96)?;
                self.file(s, len);
            }
            2 if free => {
                let len = u.int_in_range(1..=64)?;
                self.body(s, len);
            }
            3 if free => {
                let (whole, size, started) = (u.int_in_range(0..=3)?, u.int_in_range(0..=16)?, u.int_in_range(0..=16)?);
                self.run(s, whole, size, started);
            }
            4 => {
                let producer = if u.arbitrary()? { Some(s) } else { None };
                if producer.is_none_or(|p| !self.senders[p].paused) {
                    let len = u.int_in_range(1..=32)?;
                    self.server_frame(producer, len);
                }
            }
            5 | 6 => {
                let n = u.int_in_range(1..=128)?;
                self.drain(n);
            }
            7 => self.vanish(s),
            8 => {
                // The stall timer: an owner holding frames back is closed.
                if let Inbound::From(owner) = self.inbound
                    && !self.held.is_empty()
                {
                    self.vanish(owner);
                }
            }
            _ => {}
        }
        self.settle();
        Ok(())
    }

    /// Every sender finishes what it started and the receiver drains: no
    /// frame may stay in progress, held, or waited for.
    fn finish(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            for s in 0..SENDERS {
                if !self.senders[s].paused && self.senders[s].pending.is_none() && self.senders[s].out != Out::Boundary {
                    self.body(s, u64::MAX);
                    moved = true;
                }
            }
            if !self.queue.is_empty() || !self.waiters.is_empty() {
                self.drain(usize::MAX);
                moved = true;
            }
            self.settle();
            if !moved {
                break;
            }
        }
        assert_eq!(self.inbound, Inbound::Idle, "a frame left in progress: {self:#?}");
        assert!(self.held.is_empty() && self.queue.is_empty() && self.open.is_none(), "{self:#?}");
        for sender in &self.senders {
            assert!(!sender.paused && sender.pending.is_none() && sender.out == Out::Boundary, "stuck: {self:#?}");
        }
        assert!(self.file_owed.is_empty(), "FILE bytes lost: {self:#?}");
    }
}

fn model(u: &mut Unstructured<'_>) -> Result<()> {
    // Soft 0 is left out: nothing could ever be written (FILE would wait
    // forever and padding never complete).
    let soft = u.int_in_range(1..=160)?;
    let framing = if u.arbitrary()? { Framing::LengthPrefixed } else { Framing::Seed };
    let mut model = Model::new(soft, framing);
    for _ in 0..256 {
        if u.is_empty() {
            break;
        }
        model.step(u)?;
    }
    model.finish();
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let singles = u.int_in_range(0..=7u8).unwrap_or(0);
    for _ in 0..singles {
        let _ = single(&mut u);
    }
    let _ = model(&mut u);
});

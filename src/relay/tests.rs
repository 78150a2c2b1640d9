//! Unit tests of the relay rules: the call table of PROTOCOL.md section 5
//! (one test per row, plus the order in which the rows are checked), the
//! resolution of the `ref` of CALL_ACCEPT / CALL_REJECT / CALL_END (section
//! 2), the routing of TEXT and FILE (section 6), and the counters the relay
//! keeps. The relay is driven directly through its entry points with
//! explicit instants (no sleeps, no sockets); call ids are random, so every
//! test reads them back from the actions it gets.

use std::collections::HashSet;

use super::*;

/// The ring timeout every test relay uses.
const RING: Duration = Duration::from_secs(30);

const ALICE: ConnId = ConnId {
    slot: 1,
    generation: 1,
};
const BOB: ConnId = ConnId {
    slot: 2,
    generation: 1,
};
const CAROL: ConnId = ConnId {
    slot: 3,
    generation: 1,
};
const DAVE: ConnId = ConnId {
    slot: 4,
    generation: 1,
};
/// A connection that never registered.
const STRANGER: ConnId = ConnId {
    slot: 9,
    generation: 1,
};

fn q(text: &str) -> QString {
    QString::from_str(text)
}

fn user(name: &str) -> UserId {
    UserId::from_utf8(name.as_bytes(), USER_ID_MAX_BYTES).expect("valid user id")
}

/// A QString whose UTF-16 holds an unpaired surrogate: "a" + lone U+DC00.
fn unpaired_surrogate() -> QString {
    QString {
        utf16: vec![0x00, 0x61, 0xDC, 0x00],
        null: false,
    }
}

/// A relay with alice, bob, carol and dave online on slots 1..=4.
struct World {
    relay: Relay,
    now: Instant,
}

impl World {
    fn new() -> World {
        let mut world = World {
            relay: Relay::new(RING, Duration::ZERO, USER_ID_MAX_BYTES),
            now: Instant::now(),
        };
        for (conn, name) in [
            (ALICE, "alice"),
            (BOB, "bob"),
            (CAROL, "carol"),
            (DAVE, "dave"),
        ] {
            let out = world.register(conn, name);
            assert!(
                out.is_empty(),
                "a first registration gets no reply: {out:?}"
            );
        }
        world
    }

    fn register(&mut self, conn: ConnId, name: &str) -> Vec<Action> {
        let mut out = Vec::new();
        self.relay
            .register_user(conn, user(name), self.now, &mut out);
        out
    }

    fn leave(&mut self, conn: ConnId) -> Vec<Action> {
        let mut out = Vec::new();
        self.relay.leave(conn, Departure::Lost, self.now, &mut out);
        out
    }

    fn frame(&mut self, from: ConnId, frame: &ClientFrame<'_>) -> Vec<Action> {
        let mut out = Vec::new();
        self.relay.on_frame(from, frame, self.now, &mut out);
        out
    }

    fn request_q(&mut self, from: ConnId, callee: &QString, video: u8) -> Vec<Action> {
        self.frame(
            from,
            &ClientFrame::CallRequest {
                callee: callee.as_qstr(),
                video,
            },
        )
    }

    fn request(&mut self, from: ConnId, callee: &str) -> Vec<Action> {
        self.request_q(from, &q(callee), 0)
    }

    fn accept(&mut self, from: ConnId, call_ref: &QString) -> Vec<Action> {
        self.frame(
            from,
            &ClientFrame::CallAccept {
                call_ref: call_ref.as_qstr(),
            },
        )
    }

    fn reject(&mut self, from: ConnId, call_ref: &QString, reason: &QString) -> Vec<Action> {
        self.frame(
            from,
            &ClientFrame::CallReject {
                call_ref: call_ref.as_qstr(),
                reason: reason.as_qstr(),
            },
        )
    }

    fn end(&mut self, from: ConnId, call_ref: &QString) -> Vec<Action> {
        self.frame(
            from,
            &ClientFrame::CallEnd {
                call_ref: call_ref.as_qstr(),
            },
        )
    }

    fn text(&mut self, from: ConnId, to: &QString, text: &QString) -> Vec<Action> {
        self.frame(
            from,
            &ClientFrame::Text {
                to: to.as_qstr(),
                text: text.as_qstr(),
            },
        )
    }

    fn timer(&mut self, call_id: &CallId, at: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        self.relay
            .on_timer(&RelayTimer::Ring(call_id.clone()), at, &mut out);
        out
    }

    /// `caller` calls `callee_name` (online on `callee`); checks that it rings
    /// and returns the new call's id.
    fn ring(&mut self, caller: ConnId, callee: ConnId, callee_name: &str) -> CallId {
        let out = self.request(caller, callee_name);
        let call_id = rung_call_id(&out, callee);
        assert!(
            !out.iter().any(|action| sends_to(action, caller)),
            "the caller of a ringing call gets nothing: {out:?}"
        );
        call_id
    }

    /// alice calls bob and bob accepts; returns the call id.
    fn alice_bob_accepted(&mut self) -> CallId {
        let call_id = self.ring(ALICE, BOB, "bob");
        let out = self.accept(BOB, &q(""));
        assert_eq!(out.len(), 4, "{out:?}");
        call_id
    }

    fn ended(&self, reason: EndReason) -> u64 {
        let index = EndReason::ALL
            .iter()
            .position(|r| *r == reason)
            .expect("every reason has a counter");
        self.relay.stats().calls_ended[index]
    }
}

/// True if `action` sends a frame or a notification to `conn`.
fn sends_to(action: &Action, conn: ConnId) -> bool {
    match action {
        Action::Send { to, .. } | Action::Notify { to, .. } => *to == conn,
        _ => false,
    }
}

/// The id of the call whose CALL_REQUEST `out` sends to `callee`, after
/// checking the rest of a ringing request's actions.
fn rung_call_id(out: &[Action], callee: ConnId) -> CallId {
    let call_id = out
        .iter()
        .find_map(|action| match action {
            Action::Send {
                to,
                frame: ServerFrame::CallRequest { call_id, .. },
            } if *to == callee => Some(call_id.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no CALL_REQUEST to {callee}: {out:?}"));
    assert_eq!(call_id.as_str().len(), 36);
    call_id
}

/// Checks that `out` is exactly one CALL_REJECT to `caller` with `reason`,
/// and returns its (fresh) call id.
fn refused(out: &[Action], caller: ConnId, reason: &str) -> CallId {
    match out {
        [
            Action::Send {
                to,
                frame:
                    ServerFrame::CallReject {
                        call_id,
                        reason: got,
                    },
            },
        ] if *to == caller => {
            assert_eq!(*got, q(reason), "refusal reason in {out:?}");
            assert_eq!(call_id.as_str().len(), 36);
            call_id.clone()
        }
        _ => panic!("expected a lone CALL_REJECT {reason:?} to {caller}: {out:?}"),
    }
}

/// Checks that `out` is exactly one `no_such_call` notification to `conn`.
fn assert_no_such_call(out: &[Action], conn: ConnId) {
    assert!(
        matches!(
            out,
            [Action::Notify { to, code: ErrorCode::NoSuchCall, .. }] if *to == conn
        ),
        "expected a lone no_such_call to {conn}: {out:?}"
    );
}

/// Checks that `actual` holds the `expected` actions, in any order.
#[track_caller]
fn assert_same_actions(actual: &[Action], expected: &[Action]) {
    let mut left: Vec<&Action> = actual.iter().collect();
    for want in expected {
        let at = left
            .iter()
            .position(|got| *got == want)
            .unwrap_or_else(|| panic!("missing {want:?} in {actual:?}"));
        left.remove(at);
    }
    assert!(left.is_empty(), "unexpected {left:?} in {actual:?}");
}

fn send(to: ConnId, frame: ServerFrame) -> Action {
    Action::Send { to, frame }
}

fn call_end(to: ConnId, call_id: &CallId) -> Action {
    send(
        to,
        ServerFrame::CallEnd {
            call_id: call_id.clone(),
        },
    )
}

fn call_reject(to: ConnId, call_id: &CallId, reason: QString) -> Action {
    send(
        to,
        ServerFrame::CallReject {
            call_id: call_id.clone(),
            reason,
        },
    )
}

fn unlink(conn: ConnId) -> Action {
    Action::Unlink { conn }
}

// ---- Section 5, row 1: REQUEST to an online, free user -------------------

#[test]
fn request_to_online_free_user_rings_callee_only_and_arms_ring_timer() {
    let mut world = World::new();
    let out = world.request_q(ALICE, &q("bob"), 1);
    let call_id = rung_call_id(&out, BOB);
    assert_same_actions(
        &out,
        &[
            send(
                BOB,
                ServerFrame::CallRequest {
                    call_id: call_id.clone(),
                    caller: user("alice"),
                    video: 1,
                },
            ),
            Action::ArmTimer {
                at: world.now + RING,
                timer: RelayTimer::Ring(call_id),
            },
        ],
    );
    assert_eq!(world.relay.call_counts(), (1, 0));
}

#[test]
fn request_forwards_the_is_video_byte_as_is() {
    let mut world = World::new();
    for (caller, callee, name, video) in [(ALICE, BOB, "bob", 0), (CAROL, DAVE, "dave", 7)] {
        let out = world.request_q(caller, &q(name), video);
        assert!(
            out.iter().any(|action| matches!(
                action,
                Action::Send {
                    to,
                    frame: ServerFrame::CallRequest { video: got, .. },
                } if *to == callee && *got == video
            )),
            "{out:?}"
        );
    }
}

// ---- Row 2: REQUEST to oneself or to an invalid callee -> "invalid" -------

#[test]
fn request_to_oneself_is_refused_invalid() {
    let mut world = World::new();
    let out = world.request(ALICE, "alice");
    refused(&out, ALICE, "invalid");
    assert_eq!(world.relay.call_counts(), (0, 0));
}

#[test]
fn request_to_empty_or_null_callee_is_refused_invalid() {
    let mut world = World::new();
    for callee in [q(""), QString::null()] {
        let out = world.request_q(ALICE, &callee, 0);
        refused(&out, ALICE, "invalid");
    }
    assert_eq!(world.relay.call_counts(), (0, 0));
}

#[test]
fn request_to_callee_over_128_utf8_bytes_is_refused_invalid() {
    let mut world = World::new();
    // 129 ASCII bytes, and 43 x U+20AC: 129 UTF-8 bytes but only 86 UTF-16
    // bytes (the limit counts UTF-8).
    for callee in ["a".repeat(129), "\u{20AC}".repeat(43)] {
        let out = world.request(ALICE, &callee);
        refused(&out, ALICE, "invalid");
    }
    // 128 bytes is a valid id: nobody by that id is online.
    let out = world.request(ALICE, &"a".repeat(128));
    refused(&out, ALICE, "offline");
}

#[test]
fn request_to_online_user_with_128_byte_id_rings() {
    let mut world = World::new();
    let long = "a".repeat(128);
    let long_conn = ConnId {
        slot: 6,
        generation: 1,
    };
    assert!(world.register(long_conn, &long).is_empty());
    world.ring(ALICE, long_conn, &long);
}

#[test]
fn request_to_callee_with_unpaired_surrogate_is_refused_invalid() {
    let mut world = World::new();
    let lone_high = QString {
        utf16: vec![0xD8, 0x3D],
        null: false,
    };
    for callee in [unpaired_surrogate(), lone_high] {
        let out = world.request_q(ALICE, &callee, 0);
        refused(&out, ALICE, "invalid");
    }
}

#[test]
fn request_to_callee_with_control_character_is_refused_invalid() {
    let mut world = World::new();
    for callee in ["bo\tb", "bob\n", "\0", "a\u{7f}", "a\u{85}"] {
        let out = world.request(ALICE, callee);
        refused(&out, ALICE, "invalid");
    }
}

// ---- Row 3: REQUEST while the caller is in a call -> "busy" ---------------

#[test]
fn request_while_caller_rings_someone_is_refused_busy() {
    let mut world = World::new();
    world.ring(ALICE, BOB, "bob");
    let out = world.request(ALICE, "carol");
    refused(&out, ALICE, "busy");
    assert_eq!(world.relay.call_counts(), (1, 0));
}

#[test]
fn request_while_caller_is_being_rung_is_refused_busy() {
    let mut world = World::new();
    world.ring(ALICE, BOB, "bob");
    let out = world.request(BOB, "carol");
    refused(&out, BOB, "busy");
}

#[test]
fn request_while_caller_is_in_accepted_call_is_refused_busy() {
    let mut world = World::new();
    world.alice_bob_accepted();
    let out = world.request(ALICE, "carol");
    refused(&out, ALICE, "busy");
    assert_eq!(world.relay.call_counts(), (0, 1));
}

// ---- Row 4: REQUEST to an offline user -> "offline" -----------------------

#[test]
fn request_to_offline_user_is_refused_offline() {
    let mut world = World::new();
    let out = world.request(ALICE, "zoe");
    refused(&out, ALICE, "offline");
    assert_eq!(world.relay.call_counts(), (0, 0));
}

// ---- Row 5: REQUEST to a user in a call -> "busy" -------------------------

#[test]
fn request_to_user_in_ringing_call_is_refused_busy() {
    let mut world = World::new();
    world.ring(ALICE, BOB, "bob");
    // The callee of the ringing call, then its caller.
    let out = world.request(CAROL, "bob");
    refused(&out, CAROL, "busy");
    let out = world.request(CAROL, "alice");
    refused(&out, CAROL, "busy");
}

#[test]
fn request_to_user_in_accepted_call_is_refused_busy() {
    let mut world = World::new();
    world.alice_bob_accepted();
    let out = world.request(CAROL, "bob");
    refused(&out, CAROL, "busy");
    let out = world.request(CAROL, "alice");
    refused(&out, CAROL, "busy");
}

// ---- The rows are checked in order ----------------------------------------

#[test]
fn invalid_callee_wins_over_busy_caller() {
    let mut world = World::new();
    world.ring(ALICE, BOB, "bob");
    refused(&world.request(ALICE, "alice"), ALICE, "invalid");
    refused(&world.request(ALICE, ""), ALICE, "invalid");
}

#[test]
fn busy_caller_wins_over_offline_callee() {
    let mut world = World::new();
    world.ring(ALICE, BOB, "bob");
    refused(&world.request(ALICE, "zoe"), ALICE, "busy");
}

// ---- Refused requests get a fresh id --------------------------------------

#[test]
fn refused_requests_get_fresh_ids_never_a_live_call_id() {
    let mut world = World::new();
    let live = world.ring(ALICE, BOB, "bob");
    let mut seen = HashSet::from([live.clone()]);
    let refusals = [
        (CAROL, "bob", "busy"),
        (CAROL, "alice", "busy"),
        (ALICE, "carol", "busy"),
        (BOB, "carol", "busy"),
        (CAROL, "carol", "invalid"),
        (CAROL, "zoe", "offline"),
        (CAROL, "bob", "busy"),
    ];
    for (caller, callee, reason) in refusals {
        let call_id = refused(&world.request(caller, callee), caller, reason);
        assert_ne!(call_id, live, "a refusal must not reveal a live call id");
        assert!(seen.insert(call_id), "refusal ids are fresh");
    }
    // Refusals create no call and leave the refused caller free.
    assert_eq!(world.relay.call_counts(), (1, 0));
    world.ring(CAROL, DAVE, "dave");
}

#[test]
fn call_ids_are_uuid_formatted_and_unique() {
    let mut world = World::new();
    let mut seen = HashSet::new();
    for _ in 0..200 {
        let call_id = world.ring(ALICE, BOB, "bob");
        let text = call_id.as_str();
        assert_eq!(text.len(), 36);
        for (index, byte) in text.bytes().enumerate() {
            if matches!(index, 8 | 13 | 18 | 23) {
                assert_eq!(byte, b'-', "{text}");
            } else {
                assert!(matches!(byte, b'0'..=b'9' | b'a'..=b'f'), "{text}");
            }
        }
        assert!(seen.insert(call_id.clone()), "{text} repeated");
        world.end(ALICE, &q(""));
    }
}

// ---- Row 6: the callee ACCEPTs a ringing call -----------------------------

#[test]
fn callee_accept_sends_call_accept_to_both_and_links_both_ways() {
    let mut world = World::new();
    let call_id = world.ring(ALICE, BOB, "bob");
    let out = world.accept(BOB, &q(call_id.as_str()));
    let accepted = |to| {
        send(
            to,
            ServerFrame::CallAccept {
                call_id: call_id.clone(),
            },
        )
    };
    assert_same_actions(
        &out,
        &[
            accepted(ALICE),
            accepted(BOB),
            Action::Link {
                conn: ALICE,
                peer: Some(BOB),
                call_id: call_id.clone(),
                peer_user: user("bob"),
            },
            Action::Link {
                conn: BOB,
                peer: Some(ALICE),
                call_id: call_id.clone(),
                peer_user: user("alice"),
            },
        ],
    );
    assert_eq!(world.relay.call_counts(), (0, 1));
}

// ---- Row 7: the callee REJECTs a ringing call with reason r ---------------

#[test]
fn callee_reject_sends_its_reason_to_both_and_frees_them() {
    let mut world = World::new();
    let call_id = world.ring(ALICE, BOB, "bob");
    let out = world.reject(BOB, &q(""), &q("not now"));
    assert_same_actions(
        &out,
        &[
            call_reject(ALICE, &call_id, q("not now")),
            call_reject(BOB, &call_id, q("not now")),
        ],
    );
    assert_eq!(world.relay.call_counts(), (0, 0));
    world.ring(BOB, ALICE, "alice");
}

#[test]
fn callee_reject_forwards_null_and_odd_reasons_as_is() {
    let mut world = World::new();
    for reason in [QString::null(), q(""), unpaired_surrogate()] {
        let call_id = world.ring(ALICE, BOB, "bob");
        let out = world.reject(BOB, &q("alice"), &reason);
        assert_same_actions(
            &out,
            &[
                call_reject(ALICE, &call_id, reason.clone()),
                call_reject(BOB, &call_id, reason.clone()),
            ],
        );
    }
}

// ---- Row 8: END by either party, caller REJECT (cancel), callee REJECT of
// an accepted call -> CALL_END to both ---------------------------------------

#[test]
fn caller_end_of_ringing_call_sends_call_end_to_both() {
    let mut world = World::new();
    let call_id = world.ring(ALICE, BOB, "bob");
    let out = world.end(ALICE, &q(call_id.as_str()));
    assert_same_actions(&out, &[call_end(ALICE, &call_id), call_end(BOB, &call_id)]);
    assert_eq!(world.relay.call_counts(), (0, 0));
}

#[test]
fn callee_end_of_ringing_call_sends_call_end_to_both() {
    let mut world = World::new();
    let call_id = world.ring(ALICE, BOB, "bob");
    let out = world.end(BOB, &q(call_id.as_str()));
    assert_same_actions(&out, &[call_end(ALICE, &call_id), call_end(BOB, &call_id)]);
    assert_eq!(world.relay.call_counts(), (0, 0));
}

#[test]
fn either_party_end_of_accepted_call_sends_call_end_to_both_and_unlinks() {
    for ender in [ALICE, BOB] {
        let mut world = World::new();
        let call_id = world.alice_bob_accepted();
        let out = world.end(ender, &q(""));
        assert_same_actions(
            &out,
            &[
                call_end(ALICE, &call_id),
                call_end(BOB, &call_id),
                unlink(ALICE),
                unlink(BOB),
            ],
        );
        assert_eq!(world.relay.call_counts(), (0, 0));
        // Both are free again.
        world.ring(BOB, ALICE, "alice");
    }
}

#[test]
fn caller_reject_of_ringing_call_is_a_cancel_with_call_end_to_both() {
    let mut world = World::new();
    let call_id = world.ring(ALICE, BOB, "bob");
    let out = world.reject(ALICE, &q("bob"), &q("changed my mind"));
    assert_same_actions(&out, &[call_end(ALICE, &call_id), call_end(BOB, &call_id)]);
    assert_eq!(world.relay.call_counts(), (0, 0));
}

#[test]
fn caller_reject_of_accepted_call_ends_it_with_call_end_to_both() {
    let mut world = World::new();
    let call_id = world.alice_bob_accepted();
    let out = world.reject(ALICE, &q(""), &q("bye"));
    assert_same_actions(
        &out,
        &[
            call_end(ALICE, &call_id),
            call_end(BOB, &call_id),
            unlink(ALICE),
            unlink(BOB),
        ],
    );
}

#[test]
fn callee_reject_of_accepted_call_ends_it_with_call_end_to_both() {
    let mut world = World::new();
    let call_id = world.alice_bob_accepted();
    let out = world.reject(BOB, &q(call_id.as_str()), &q("busy now"));
    assert_same_actions(
        &out,
        &[
            call_end(ALICE, &call_id),
            call_end(BOB, &call_id),
            unlink(ALICE),
            unlink(BOB),
        ],
    );
    assert_eq!(world.relay.call_counts(), (0, 0));
}

// ---- Row 9: the caller ACCEPTs its own call; anyone acts on a call they
// are not in -> ignored, no_such_call ----------------------------------------

#[test]
fn caller_accepting_own_ringing_call_is_ignored_with_no_such_call() {
    let mut world = World::new();
    let call_id = world.ring(ALICE, BOB, "bob");
    for call_ref in [q(call_id.as_str()), q("bob"), q("")] {
        let out = world.accept(ALICE, &call_ref);
        assert_no_such_call(&out, ALICE);
    }
    // Still ringing: the callee can accept it.
    assert_eq!(world.relay.call_counts(), (1, 0));
    assert_eq!(world.accept(BOB, &q("")).len(), 4);
}

#[test]
fn caller_accepting_own_accepted_call_is_ignored_with_no_such_call() {
    let mut world = World::new();
    world.alice_bob_accepted();
    let out = world.accept(ALICE, &q(""));
    assert_no_such_call(&out, ALICE);
    assert_eq!(world.relay.call_counts(), (0, 1));
}

#[test]
fn free_third_user_acting_on_a_call_gets_no_such_call_and_parties_get_nothing() {
    for accepted in [false, true] {
        let mut world = World::new();
        let call_id = if accepted {
            world.alice_bob_accepted()
        } else {
            world.ring(ALICE, BOB, "bob")
        };
        let counts = world.relay.call_counts();
        for call_ref in [
            q(call_id.as_str()),
            q("alice"),
            q("bob"),
            q(""),
            QString::null(),
        ] {
            assert_no_such_call(&world.accept(CAROL, &call_ref), CAROL);
            assert_no_such_call(&world.reject(CAROL, &call_ref, &q("no")), CAROL);
            assert_no_such_call(&world.end(CAROL, &call_ref), CAROL);
        }
        assert_eq!(world.relay.call_counts(), counts, "the call is untouched");
    }
}

#[test]
fn user_in_another_call_cannot_act_on_a_call_they_are_not_in() {
    let mut world = World::new();
    let alice_bob = world.ring(ALICE, BOB, "bob");
    world.ring(CAROL, DAVE, "dave");
    // dave (callee of his own call) names alice and bob's call or parties.
    for call_ref in [q(alice_bob.as_str()), q("alice"), q("bob")] {
        assert_no_such_call(&world.accept(DAVE, &call_ref), DAVE);
        assert_no_such_call(&world.reject(DAVE, &call_ref, &q("no")), DAVE);
        assert_no_such_call(&world.end(DAVE, &call_ref), DAVE);
    }
    assert_eq!(world.relay.call_counts(), (2, 0));
    // Both calls still work for their own parties.
    assert_eq!(world.accept(BOB, &q(alice_bob.as_str())).len(), 4);
    assert_eq!(world.accept(DAVE, &q("carol")).len(), 4);
}

#[test]
fn acting_without_any_call_gets_no_such_call() {
    let mut world = World::new();
    assert_no_such_call(&world.accept(ALICE, &q("")), ALICE);
    assert_no_such_call(&world.reject(ALICE, &QString::null(), &q("x")), ALICE);
    assert_no_such_call(&world.end(ALICE, &q("bob")), ALICE);
}

// ---- Row 10: the callee ACCEPTs a call already accepted -> ignored --------

#[test]
fn callee_accepting_already_accepted_call_does_nothing() {
    let mut world = World::new();
    let call_id = world.alice_bob_accepted();
    for call_ref in [q(""), q(call_id.as_str()), q("alice")] {
        let out = world.accept(BOB, &call_ref);
        assert!(out.is_empty(), "{out:?}");
    }
    assert_eq!(world.relay.call_counts(), (0, 1));
    assert_eq!(world.relay.stats().calls_accepted, 1);
}

// ---- Row 11: a party disconnects, is replaced or times out ----------------

#[test]
fn caller_disconnect_during_ringing_sends_call_end_to_callee_only() {
    let mut world = World::new();
    let call_id = world.ring(ALICE, BOB, "bob");
    let out = world.leave(ALICE);
    assert_same_actions(&out, &[call_end(BOB, &call_id)]);
    assert_eq!(world.relay.call_counts(), (0, 0));
    assert_eq!(world.relay.online(), 3);
    refused(&world.request(BOB, "alice"), BOB, "offline");
}

#[test]
fn callee_disconnect_during_ringing_sends_call_end_to_caller_only() {
    let mut world = World::new();
    let call_id = world.ring(ALICE, BOB, "bob");
    let out = world.leave(BOB);
    assert_same_actions(&out, &[call_end(ALICE, &call_id)]);
    world.ring(ALICE, CAROL, "carol");
}

#[test]
fn party_disconnect_during_accepted_call_sends_call_end_to_other_and_unlinks() {
    let mut world = World::new();
    let call_id = world.alice_bob_accepted();
    let out = world.leave(BOB);
    assert_same_actions(
        &out,
        &[call_end(ALICE, &call_id), unlink(ALICE), unlink(BOB)],
    );
    assert_eq!(world.relay.call_counts(), (0, 0));
    assert_eq!(world.relay.user_of(BOB), None);
    world.ring(ALICE, CAROL, "carol");
}

#[test]
fn disconnect_without_a_call_sends_nothing() {
    let mut world = World::new();
    world.ring(ALICE, BOB, "bob");
    assert!(world.leave(CAROL).is_empty());
    assert!(world.leave(STRANGER).is_empty());
    assert_eq!(world.relay.call_counts(), (1, 0));
}

#[test]
fn replacement_closes_old_connection_and_ends_its_call_for_the_other_party() {
    let mut world = World::new();
    let call_id = world.alice_bob_accepted();
    let new_alice = ConnId {
        slot: 5,
        generation: 1,
    };
    let out = world.register(new_alice, "alice");
    assert_same_actions(
        &out,
        &[
            Action::Close {
                conn: ALICE,
                code: ErrorCode::Replaced,
                detail: "a newer connection registered this user id".to_owned(),
            },
            call_end(BOB, &call_id),
            unlink(ALICE),
            unlink(BOB),
        ],
    );
    assert_eq!(world.relay.call_counts(), (0, 0));
    assert_eq!(world.relay.online(), 4);
    assert_eq!(world.relay.user_of(new_alice), Some(&user("alice")));
    // alice is reachable on the new connection and free.
    world.ring(BOB, new_alice, "alice");
}

#[test]
fn replacement_of_a_ringing_callee_ends_the_call_for_the_caller() {
    let mut world = World::new();
    let call_id = world.ring(ALICE, BOB, "bob");
    let new_bob = ConnId {
        slot: 2,
        generation: 2,
    };
    let out = world.register(new_bob, "bob");
    assert_same_actions(
        &out,
        &[
            Action::Close {
                conn: BOB,
                code: ErrorCode::Replaced,
                detail: "a newer connection registered this user id".to_owned(),
            },
            call_end(ALICE, &call_id),
        ],
    );
    // The server then reports the old connection gone: nothing more happens.
    assert!(world.leave(BOB).is_empty());
    assert_eq!(world.relay.user_of(new_bob), Some(&user("bob")));
    world.ring(ALICE, new_bob, "bob");
}

// ---- Row 12: nobody answers within the ring timeout -----------------------

#[test]
fn ring_timeout_at_deadline_rejects_caller_with_timeout_and_ends_callee() {
    let mut world = World::new();
    let call_id = world.ring(ALICE, BOB, "bob");
    let deadline = world.now + RING;
    let out = world.timer(&call_id, deadline);
    assert_same_actions(
        &out,
        &[
            call_reject(ALICE, &call_id, q("timeout")),
            call_end(BOB, &call_id),
        ],
    );
    assert_eq!(world.relay.call_counts(), (0, 0));
    // Both are free; the late timer does nothing more.
    assert!(world.timer(&call_id, deadline + RING).is_empty());
    world.ring(BOB, ALICE, "alice");
}

#[test]
fn ring_timer_before_deadline_does_nothing() {
    let mut world = World::new();
    let call_id = world.ring(ALICE, BOB, "bob");
    let early = world.now + RING - Duration::from_millis(1);
    assert!(world.timer(&call_id, early).is_empty());
    assert_eq!(world.relay.call_counts(), (1, 0));
    assert_eq!(world.timer(&call_id, world.now + RING).len(), 2);
}

#[test]
fn ring_timer_of_accepted_call_does_nothing() {
    let mut world = World::new();
    let call_id = world.alice_bob_accepted();
    assert!(world.timer(&call_id, world.now + RING * 2).is_empty());
    assert_eq!(world.relay.call_counts(), (0, 1));
}

#[test]
fn ring_timer_of_ended_call_does_nothing() {
    let mut world = World::new();
    let call_id = world.ring(ALICE, BOB, "bob");
    world.end(BOB, &q(""));
    // A new call between the same users has its own timer.
    let second = world.ring(ALICE, BOB, "bob");
    assert!(world.timer(&call_id, world.now + RING).is_empty());
    assert_eq!(world.relay.call_counts(), (1, 0));
    assert_eq!(world.timer(&second, world.now + RING).len(), 2);
}

// ---- Ref resolution (section 2) -------------------------------------------

#[test]
fn ref_by_call_id_resolves() {
    let mut world = World::new();
    let call_id = world.ring(ALICE, BOB, "bob");
    assert_eq!(world.accept(BOB, &q(call_id.as_str())).len(), 4);
    assert_eq!(world.end(ALICE, &q(call_id.as_str())).len(), 4);
}

#[test]
fn ref_by_other_partys_user_id_resolves() {
    let mut world = World::new();
    let call_id = world.ring(ALICE, BOB, "bob");
    assert_eq!(world.accept(BOB, &q("alice")).len(), 4);
    let out = world.end(ALICE, &q("bob"));
    assert!(out.contains(&call_end(BOB, &call_id)), "{out:?}");
}

#[test]
fn ref_empty_string_resolves_to_current_call() {
    let mut world = World::new();
    let call_id = world.ring(ALICE, BOB, "bob");
    assert_eq!(world.accept(BOB, &q("")).len(), 4);
    let out = world.end(BOB, &q(""));
    assert!(out.contains(&call_end(ALICE, &call_id)), "{out:?}");
}

#[test]
fn ref_null_qstring_resolves_to_current_call() {
    let mut world = World::new();
    let call_id = world.ring(ALICE, BOB, "bob");
    assert_eq!(world.accept(BOB, &QString::null()).len(), 4);
    let out = world.end(ALICE, &QString::null());
    assert!(out.contains(&call_end(BOB, &call_id)), "{out:?}");
}

#[test]
fn ref_naming_anything_else_is_no_such_call() {
    let mut world = World::new();
    let call_id = world.ring(ALICE, BOB, "bob");
    let other_call = world.ring(CAROL, DAVE, "dave");
    let upper = q(&call_id.as_str().to_uppercase());
    let bad_refs = [
        q("bob"),                                  // bob's own id
        q("carol"),                                // a user outside the call
        q("zoe"),                                  // nobody
        q(other_call.as_str()),                    // another live call
        q("00000000-0000-4000-8000-000000000000"), // a guess
        upper,                                     // not the id as written
        q(&format!("{} ", call_id.as_str())),      // not exactly the id
        unpaired_surrogate(),                      // not even text
    ];
    for call_ref in &bad_refs {
        assert_no_such_call(&world.accept(BOB, call_ref), BOB);
        assert_no_such_call(&world.reject(BOB, call_ref, &q("no")), BOB);
        assert_no_such_call(&world.end(BOB, call_ref), BOB);
    }
    assert_eq!(world.relay.call_counts(), (2, 0));
}

// ---- Section 6: TEXT and FILE ---------------------------------------------

#[test]
fn text_to_online_user_is_sent_with_sender_set_by_server() {
    let mut world = World::new();
    let out = world.text(ALICE, &q("bob"), &q("hello"));
    assert_eq!(
        out,
        [send(
            BOB,
            ServerFrame::Text {
                from: user("alice"),
                text: q("hello"),
            },
        )]
    );
    assert_eq!(world.relay.stats().texts_relayed, 1);
}

#[test]
fn text_sender_cannot_be_forged() {
    let mut world = World::new();
    // Whatever the text says, `from` is the id the connection registered.
    let out = world.text(CAROL, &q("bob"), &q("from: alice"));
    assert_eq!(
        out,
        [send(
            BOB,
            ServerFrame::Text {
                from: user("carol"),
                text: q("from: alice"),
            },
        )]
    );
}

#[test]
fn text_is_forwarded_verbatim_including_null_and_unpaired_surrogates() {
    let mut world = World::new();
    for text in [QString::null(), q(""), unpaired_surrogate()] {
        let out = world.text(ALICE, &q("bob"), &text);
        assert_eq!(
            out,
            [send(
                BOB,
                ServerFrame::Text {
                    from: user("alice"),
                    text,
                },
            )]
        );
    }
}

#[test]
fn text_to_oneself_is_delivered() {
    let mut world = World::new();
    let out = world.text(ALICE, &q("alice"), &q("note to self"));
    assert_eq!(
        out,
        [send(
            ALICE,
            ServerFrame::Text {
                from: user("alice"),
                text: q("note to self"),
            },
        )]
    );
}

#[test]
fn text_to_offline_or_invalid_user_is_notified_offline() {
    let mut world = World::new();
    for to in [
        q("zoe"),
        q(""),
        QString::null(),
        unpaired_surrogate(),
        q("bo\tb"),
    ] {
        let out = world.text(ALICE, &to, &q("hello?"));
        assert!(
            matches!(
                out.as_slice(),
                [Action::Notify { to, code: ErrorCode::Offline, .. }] if *to == ALICE
            ),
            "{out:?}"
        );
    }
    assert_eq!(world.relay.stats().texts_undeliverable, 5);
    assert_eq!(world.relay.stats().texts_relayed, 0);
}

#[test]
fn text_to_user_who_left_is_notified_offline() {
    let mut world = World::new();
    world.leave(BOB);
    let out = world.text(ALICE, &q("bob"), &q("hello?"));
    assert!(
        matches!(
            out.as_slice(),
            [Action::Notify {
                code: ErrorCode::Offline,
                ..
            }]
        ),
        "{out:?}"
    );
}

#[test]
fn file_to_online_user_is_delivered_with_sender_id() {
    let mut world = World::new();
    assert_eq!(
        world.relay.route_file(ALICE, q("bob").as_qstr()),
        FileRoute::Deliver {
            to: BOB,
            from: user("alice"),
        }
    );
    assert_eq!(
        world.relay.route_file(BOB, q("bob").as_qstr()),
        FileRoute::Deliver {
            to: BOB,
            from: user("bob"),
        }
    );
    // Routing has no side effect (the server may ask again after waiting
    // for the receiver); the outcome is counted by note_file.
    assert_eq!(world.relay.stats().files_relayed, 0);
    world.relay.note_file(true);
    assert_eq!(world.relay.stats().files_relayed, 1);
}

#[test]
fn file_to_offline_or_invalid_user_is_undeliverable() {
    let mut world = World::new();
    for to in [q("zoe"), q(""), QString::null(), unpaired_surrogate()] {
        assert_eq!(
            world.relay.route_file(ALICE, to.as_qstr()),
            FileRoute::Undeliverable
        );
    }
    assert_eq!(world.relay.stats().files_undeliverable, 0);
    world.relay.note_file(false);
    assert_eq!(world.relay.stats().files_undeliverable, 1);
    assert_eq!(world.relay.stats().files_relayed, 0);
}

#[test]
fn file_from_unregistered_connection_is_undeliverable() {
    let world = World::new();
    assert_eq!(
        world.relay.route_file(STRANGER, q("bob").as_qstr()),
        FileRoute::Undeliverable
    );
}

// ---- Unregistered senders -------------------------------------------------

#[test]
fn frames_from_unregistered_connection_are_ignored() {
    let mut world = World::new();
    assert!(world.request(STRANGER, "bob").is_empty());
    assert!(world.text(STRANGER, &q("bob"), &q("hi")).is_empty());
    assert!(world.end(STRANGER, &q("")).is_empty());
    assert_eq!(world.relay.call_counts(), (0, 0));
    assert_eq!(world.relay.stats().calls_refused, 0);
}

// ---- Counters ---------------------------------------------------------------

#[test]
fn stats_count_calls_started_accepted_refused_and_ended_by_reason() {
    let mut world = World::new();

    // Hangup of an accepted call.
    world.alice_bob_accepted();
    world.end(BOB, &q(""));
    // Callee rejects.
    world.ring(ALICE, BOB, "bob");
    world.reject(BOB, &q(""), &q("no"));
    // Caller cancels.
    world.ring(ALICE, BOB, "bob");
    world.reject(ALICE, &q(""), &q(""));
    // Ring timeout.
    let timed_out = world.ring(ALICE, BOB, "bob");
    world.timer(&timed_out, world.now + RING);
    // Refusals: invalid, offline, busy (x2).
    world.request(ALICE, "alice");
    world.request(ALICE, "zoe");
    world.ring(CAROL, DAVE, "dave");
    world.request(ALICE, "dave");
    world.request(CAROL, "alice");
    // Ignored actions count nothing.
    world.accept(CAROL, &q(""));
    world.end(ALICE, &q(""));
    // A party leaves an accepted call.
    world.accept(DAVE, &q(""));
    world.leave(DAVE);

    let stats = world.relay.stats().clone();
    assert_eq!(stats.calls_started, 5);
    assert_eq!(stats.calls_accepted, 2);
    assert_eq!(stats.calls_refused, 4);
    assert_eq!(world.ended(EndReason::Hangup), 1);
    assert_eq!(world.ended(EndReason::Rejected), 1);
    assert_eq!(world.ended(EndReason::Cancelled), 1);
    assert_eq!(world.ended(EndReason::RingTimeout), 1);
    assert_eq!(world.ended(EndReason::PartyLeft), 1);
    assert_eq!(world.relay.call_counts(), (0, 0));
}

#[test]
fn stats_count_callee_reject_of_accepted_call_as_hangup_and_replacement_as_party_left() {
    let mut world = World::new();
    world.alice_bob_accepted();
    world.reject(BOB, &q(""), &q("bye"));
    world.alice_bob_accepted();
    world.register(
        ConnId {
            slot: 5,
            generation: 1,
        },
        "bob",
    );
    assert_eq!(world.ended(EndReason::Hangup), 1);
    assert_eq!(world.ended(EndReason::PartyLeft), 1);
    assert_eq!(world.relay.stats().calls_accepted, 2);
}

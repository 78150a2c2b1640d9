// `qtclient scenario NAME HOST PORT`: one interop scenario against a running
// relay. Every client is a GuideClient (seed framing) or a FramedClient, and
// every check is on what QDataStream itself decoded. Exit status 0 = pass.
#include <QByteArray>
#include <QMap>
#include <QString>
#include <QTextStream>
#include <functional>
#include <memory>

#include "guideclient.h"

namespace {

QString g_host;
quint16 g_port = 0;

bool fail(int line, const char *what, const QString &detail)
{
    QTextStream(stderr) << "FAIL (scenarios.cpp:" << line << "): " << what << ": " << detail << '\n';
    return false;
}

#define CHECK(cond, detail)                      \
    do {                                         \
        if (!(cond))                             \
            return fail(__LINE__, #cond, detail); \
    } while (0)

using Client = std::unique_ptr<GuideClient>;

// Connects, registers, and proves the registration was processed with a
// TEXT to itself (registration has no reply).
Client online(const QString &name, bool framed)
{
    Client client(new GuideClient(name, framed));
    if (!client->connectTo(g_host, g_port))
        return nullptr;
    client->registerClient(name);
    client->sendText(name, QStringLiteral("ready"));
    bool ok = false;
    Event event = client->waitFor(MSG_TEXT, &ok);
    if (!ok || event.from != name || event.text != QStringLiteral("ready"))
        return nullptr;
    return client;
}

// Payload bytes drawn from 'A'..'Z': seed media delimited by arrival must
// not start a chunk with 5, 6 or 7 (PROTOCOL.md section 4).
QByteArray pattern(int size, int seed)
{
    QByteArray bytes(size, '\0');
    for (int i = 0; i < size; ++i)
        bytes[i] = static_cast<char>('A' + (i * 7 + seed) % 26);
    return bytes;
}

// alice calls bob, bob accepts; returns the call id (empty on failure).
QString acceptedCall(GuideClient &alice, GuideClient &bob, bool *ok)
{
    alice.initiateCall(bob.name, true);
    Event request = bob.waitFor(MSG_CALL_REQUEST, ok);
    if (!*ok || request.caller != alice.name || request.isVideo != 1 || request.callId.size() != 36) {
        *ok = false;
        return QString();
    }
    bob.acceptCall(request.callId);
    Event a = alice.waitFor(MSG_CALL_ACCEPT, ok);
    if (!*ok || a.callId != request.callId)
        return *ok = false, QString();
    Event b = bob.waitFor(MSG_CALL_ACCEPT, ok);
    if (!*ok || b.callId != request.callId)
        return *ok = false, QString();
    return request.callId;
}

// Sends `frames` media frames each way, each after the previous arrived.
bool mediaBothWays(GuideClient &alice, GuideClient &bob, int frames, int size)
{
    for (int i = 0; i < frames; ++i) {
        QByteArray toBob = pattern(size + i * 37, i);
        alice.sendMediaData(toBob);
        bool ok = false;
        QByteArray got = bob.waitForMedia(toBob.size(), &ok);
        CHECK(ok && got == toBob, QString("frame %1 to bob: %2 of %3 bytes").arg(i).arg(got.size()).arg(toBob.size()));
        QByteArray toAlice = pattern(size / 2 + i * 11, i + 3);
        bob.sendMediaData(toAlice);
        got = alice.waitForMedia(toAlice.size(), &ok);
        CHECK(ok && got == toAlice, QString("frame %1 to alice").arg(i));
    }
    return true;
}

bool endedForBoth(GuideClient &alice, GuideClient &bob, const QString &callId)
{
    bool ok = false;
    Event a = alice.waitFor(MSG_CALL_END, &ok);
    CHECK(ok && a.callId == callId, "alice gets CALL_END " + a.callId);
    Event b = bob.waitFor(MSG_CALL_END, &ok);
    CHECK(ok && b.callId == callId, "bob gets CALL_END " + b.callId);
    return true;
}

bool callMediaEnd(bool aliceFramed, bool bobFramed)
{
    Client alice = online("alice", aliceFramed), bob = online("bob", bobFramed);
    CHECK(alice && bob, "both register");
    bool ok = false;
    QString callId = acceptedCall(*alice, *bob, &ok);
    CHECK(ok, "call is accepted");
    if (!mediaBothWays(*alice, *bob, 6, 400))
        return false;
    alice->endCall(callId);
    return endedForBoth(*alice, *bob, callId);
}

bool scenarioCall() { return callMediaEnd(false, false); }
bool scenarioMixed() { return callMediaEnd(false, true) && callMediaEnd(true, false); }

bool scenarioReject()
{
    Client alice = online("alice", false), bob = online("bob", false);
    CHECK(alice && bob, "both register");
    alice->initiateCall("bob", false);
    bool ok = false;
    Event request = bob->waitFor(MSG_CALL_REQUEST, &ok);
    CHECK(ok && request.isVideo == 0, "bob is rung");
    const QString reason = QString::fromUtf8("\xE5\xBF\x99 \xF0\x9F\x98\x80");
    bob->rejectCall(request.callId, reason);
    Event a = alice->waitFor(MSG_CALL_REJECT, &ok);
    CHECK(ok && a.callId == request.callId && a.reason == reason, "alice gets the reason: " + a.reason);
    Event b = bob->waitFor(MSG_CALL_REJECT, &ok);
    CHECK(ok && b.callId == request.callId && b.reason == reason, "bob gets the reason");
    return true;
}

bool scenarioOffline()
{
    Client alice = online("alice", false);
    CHECK(alice, "alice registers");
    alice->initiateCall("nobody", true);
    bool ok = false;
    Event event = alice->waitFor(MSG_CALL_REJECT, &ok);
    CHECK(ok && event.reason == "offline" && event.callId.size() == 36, "reason: " + event.reason);
    return true;
}

bool scenarioBusy()
{
    Client alice = online("alice", false), bob = online("bob", false), carol = online("carol", false);
    CHECK(alice && bob && carol, "all register");
    alice->initiateCall("bob", true);
    bool ok = false;
    Event request = bob->waitFor(MSG_CALL_REQUEST, &ok);
    CHECK(ok, "bob is rung");
    carol->initiateCall("bob", false);
    Event event = carol->waitFor(MSG_CALL_REJECT, &ok);
    CHECK(ok && event.reason == "busy" && event.callId != request.callId, "reason: " + event.reason);
    return true;
}

bool scenarioCancel()
{
    Client alice = online("alice", false), bob = online("bob", false);
    CHECK(alice && bob, "both register");
    alice->initiateCall("bob", true);
    bool ok = false;
    Event request = bob->waitFor(MSG_CALL_REQUEST, &ok);
    CHECK(ok, "bob is rung");
    alice->endCall(request.callId);
    return endedForBoth(*alice, *bob, request.callId);
}

bool scenarioDisconnect()
{
    Client alice = online("alice", false), bob = online("bob", false);
    CHECK(alice && bob, "both register");
    bool ok = false;
    QString callId = acceptedCall(*alice, *bob, &ok);
    CHECK(ok, "call is accepted");
    bob->socket->abort();
    Event event = alice->waitFor(MSG_CALL_END, &ok);
    CHECK(ok && event.callId == callId, "alice gets CALL_END when bob vanishes");
    return true;
}

// PROTOCOL.md 8.3: bob's connection is lost mid-call and the guide's client
// connects and registers again; it gets CALL_ACCEPT of the same call (its
// handler restarts media on it), alice hears nothing, and media flows
// between alice and the new connection.
bool scenarioResume()
{
    Client alice = online("alice", false), bob = online("bob", false);
    CHECK(alice && bob, "both register");
    bool ok = false;
    QString callId = acceptedCall(*alice, *bob, &ok);
    CHECK(ok, "call is accepted");
    bob->socket->abort();
    Client newBob(new GuideClient("bob", false));
    CHECK(newBob->connectTo(g_host, g_port), "bob connects again");
    newBob->registerClient("bob");
    Event event = newBob->waitFor(MSG_CALL_ACCEPT, &ok);
    CHECK(ok && event.callId == callId, "the new bob gets CALL_ACCEPT of " + event.callId);
    CHECK(mediaBothWays(*alice, *newBob, 3, 400), "media flows after the resume");
    newBob->endCall(callId);
    Event aliceEnd = alice->waitFor(MSG_CALL_END, &ok);
    CHECK(ok && aliceEnd.callId == callId, "alice's first message after the resume is CALL_END");
    return true;
}

bool scenarioTextFile()
{
    Client alice = online(QString::fromUtf8("\xF0\x9F\x98\x80" "alice"), false), bob = online("bob", false);
    CHECK(alice && bob, "both register");
    const QString text = QString::fromUtf8("\xE4\xBD\xA0\xE5\xA5\xBD \xF0\x9F\x98\x80");
    alice->sendText("bob", text);
    bool ok = false;
    Event event = bob->waitFor(MSG_TEXT, &ok);
    CHECK(ok && event.from == alice->name && event.text == text, "text from " + event.from);
    QByteArray data(1024 * 1024, '\0');
    for (int i = 0; i < data.size(); ++i)
        data[i] = static_cast<char>((i * 31 + i / 4093) & 0xFF);
    alice->sendFile("bob", QString::fromUtf8("photo \xF0\x9F\x93\xB7.jpg"), data);
    Event file = bob->waitFor(MSG_FILE, &ok, 30000);
    CHECK(ok && file.from == alice->name, "file arrives from alice");
    CHECK(file.fileName == QString::fromUtf8("photo \xF0\x9F\x93\xB7.jpg"), "file name " + file.fileName);
    CHECK(file.data == data, QString("file data: %1 bytes").arg(file.data.size()));
    return true;
}

bool scenarioFramedMedia()
{
    Client alice = online("alice", true), bob = online("bob", true);
    CHECK(alice && bob, "both register");
    bool ok = false;
    QString callId = acceptedCall(*alice, *bob, &ok);
    CHECK(ok, "call is accepted");
    QByteArray big(1024 * 1024, '\0');
    for (int i = 0; i < big.size(); ++i)
        big[i] = static_cast<char>((i * 7 + i / 251) & 0xFF);
    alice->sendMediaData(big);
    Event frame = bob->waitFor(MSG_MEDIA_DATA, &ok, 30000);
    CHECK(ok && frame.data == big, QString("one exact 1 MiB media frame: %1 bytes").arg(frame.data.size()));
    bob->sendMediaData(QByteArray("pong", 4));
    frame = alice->waitFor(MSG_MEDIA_DATA, &ok);
    CHECK(ok && frame.data == QByteArray("pong"), "small frame back");
    alice->sendHeartbeat();
    alice->waitFor(MSG_HEARTBEAT, &ok);
    CHECK(ok, "a length-prefixed heartbeat is answered");
    bob->endCall("");
    return endedForBoth(*alice, *bob, callId);
}

}  // namespace

int runScenario(const QString &name, const QString &host, quint16 port)
{
    g_host = host;
    g_port = port;
    const QMap<QString, std::function<bool()>> scenarios = {
        {"call", scenarioCall},
        {"mixed", scenarioMixed},
        {"reject", scenarioReject},
        {"offline", scenarioOffline},
        {"busy", scenarioBusy},
        {"cancel", scenarioCancel},
        {"disconnect", scenarioDisconnect},
        {"resume", scenarioResume},
        {"text_file", scenarioTextFile},
        {"framed_media", scenarioFramedMedia},
    };
    if (!scenarios.contains(name)) {
        QTextStream(stderr) << "unknown scenario " << name << "; known: " << scenarios.keys().join(", ") << '\n';
        return 2;
    }
    bool passed = scenarios[name]();
    QTextStream(stdout) << (passed ? "PASS " : "FAIL ") << name << '\n';
    return passed ? 0 : 1;
}

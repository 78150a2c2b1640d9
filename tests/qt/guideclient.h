// The client of the integration guide (shared/client-guide.md), written the
// way the guide writes it: QTcpSocket + QDataStream (Qt_5_9), one function
// per message, and a handleServerMessage() that switches on the first byte.
//
// GuideClient is the guide's "seed" framing (frames back to back, media as
// `6` + raw bytes). FramedClient is the same client with the Qt "block size"
// idiom (quint32 length before every frame), which the relay detects by the
// first three bytes `00 00 00`.
//
// Differences from the guide, all for testing: received messages are
// recorded in `events` instead of driving a UI; and where the guide handles
// one message per readyRead, handleServerMessage() loops while complete
// messages remain (the relay may coalesce several into one read) and keeps an
// incomplete one (a large FILE) for the next readyRead.
//
// TLS mode (`qtclient scenario NAME HOST PORT --tls CA.pem`, enableTls()):
// every client's socket is a QSslSocket (a QTcpSocket, so the rest of the
// code is unchanged) that connects with connectToHostEncrypted, trusts only
// the CA in that file, verifies the relay's certificate and host name, and
// is "connected" only once encrypted() has been emitted.
#pragma once

#include <QByteArray>
#include <QDataStream>
#include <QList>
#include <QObject>
#include <QString>
#include <QTcpSocket>

#include <functional>

// Emitted whenever any client receives bytes or loses its connection, so a
// wait can run the event loop (every socket keeps reading and writing) and
// re-check its condition only when something happened.
class Progress : public QObject {
    Q_OBJECT
public:
    static Progress &instance();
signals:
    void changed();
};

// Switches every GuideClient made afterwards to TLS with `caPath` (PEM) as
// the only CA. False, with the reason in `error`, when Qt has no TLS
// backend (libssl not loadable) or the file holds no certificate.
bool enableTls(const QString &caPath, QString *error);

// Runs the event loop until `done()` holds or `timeoutMs` passes.
bool waitUntil(const std::function<bool()> &done, int timeoutMs = 10000);

enum MessageType {
    MSG_TEXT = 0,
    MSG_FILE = 1,
    MSG_CALL_REQUEST = 2,
    MSG_CALL_ACCEPT = 3,
    MSG_CALL_REJECT = 4,
    MSG_CALL_END = 5,
    MSG_MEDIA_DATA = 6,
    MSG_HEARTBEAT = 7,
    MSG_ERROR = 0x20,
};

// One message as a client decoded it with QDataStream.
struct Event {
    int type = -1;
    QString callId, caller, reason, from, text, fileName, code, detail;
    quint8 isVideo = 0;
    QByteArray data;  // media payload or file data
};

class GuideClient : public QObject {
    Q_OBJECT
public:
    GuideClient(const QString &name, bool framed, QObject *parent = nullptr);

    // Connects and waits for `connected` (in TLS mode: for `encrypted`);
    // false on failure or timeout, with the reason on stderr in TLS mode.
    bool connectTo(const QString &host, quint16 port);

    // The guide's functions.
    void registerClient(const QString &userId);
    void initiateCall(const QString &callee, bool isVideoCall);
    void acceptCall(const QString &callId);
    void rejectCall(const QString &callId, const QString &reason);
    void endCall(const QString &callId);
    void sendMediaData(const QByteArray &mediaData);
    // TEXT and FILE, written in the same style (PROTOCOL.md section 2).
    void sendText(const QString &to, const QString &text);
    void sendFile(const QString &to, const QString &fileName, const QByteArray &data);
    void sendHeartbeat();

    // Waits (running the event loop) until an event of `type` is recorded,
    // then removes and returns it. `ok` is false on timeout.
    Event waitFor(int type, bool *ok, int timeoutMs = 10000);
    // Waits until `count` media bytes have arrived in total; returns them.
    QByteArray waitForMedia(int count, bool *ok, int timeoutMs = 10000);
    // Waits until the relay closes the connection.
    bool waitForDisconnect(int timeoutMs = 10000);

    QTcpSocket *socket;
    QString name;
    bool framed;
    QList<Event> events;
    QByteArray media;  // every media byte received, in order

private slots:
    void onReadyRead();
    void onDisconnected();

private:
    void send(const QByteArray &message);
    // Decodes complete messages from `pending`; returns false when the rest
    // is incomplete.
    bool handleServerMessage();
    bool decodeOne(QDataStream &stream, quint8 msgType, Event &event);

    QByteArray pending;
};

// GuideClient: the guide's client functions (see guideclient.h).
#include "guideclient.h"

#include <QCoreApplication>
#include <QElapsedTimer>
#include <QEventLoop>
#include <QSslConfiguration>
#include <QSslSocket>
#include <QTextStream>
#include <QTimer>

namespace {
bool g_tls = false;
QList<QSslCertificate> g_tlsCa;
}  // namespace

bool enableTls(const QString &caPath, QString *error)
{
    if (!QSslSocket::supportsSsl()) {
        *error = QStringLiteral("QSslSocket::supportsSsl() is false: Qt found no usable TLS library "
                                "(Qt %1 was built against %2; install the matching libssl, e.g. "
                                "`apt-get install libssl3`)")
                     .arg(QString::fromLatin1(qVersion()), QSslSocket::sslLibraryBuildVersionString());
        return false;
    }
    g_tlsCa = QSslCertificate::fromPath(caPath, QSsl::Pem, QSslCertificate::PatternSyntax::FixedString);
    if (g_tlsCa.isEmpty()) {
        *error = QStringLiteral("no PEM certificate in %1").arg(caPath);
        return false;
    }
    g_tls = true;
    return true;
}

Progress &Progress::instance()
{
    static Progress progress;
    return progress;
}

bool waitUntil(const std::function<bool()> &done, int timeoutMs)
{
    QElapsedTimer clock;
    clock.start();
    while (!done()) {
        qint64 left = timeoutMs - clock.elapsed();
        if (left <= 0)
            return false;
        QEventLoop loop;
        QTimer timer;
        timer.setSingleShot(true);
        QObject::connect(&timer, &QTimer::timeout, &loop, &QEventLoop::quit);
        QObject::connect(&Progress::instance(), &Progress::changed, &loop, &QEventLoop::quit);
        timer.start(static_cast<int>(left));
        loop.exec();
    }
    return true;
}

GuideClient::GuideClient(const QString &n, bool f, QObject *parent)
    : QObject(parent), socket(g_tls ? new QSslSocket(this) : new QTcpSocket(this)), name(n), framed(f)
{
    if (g_tls) {
        auto *ssl = static_cast<QSslSocket *>(socket);
        QSslConfiguration config = ssl->sslConfiguration();
        config.setCaCertificates(g_tlsCa);  // the test CA only, not the system's
        config.setPeerVerifyMode(QSslSocket::VerifyPeer);
        config.setProtocol(QSsl::TlsV1_2OrLater);
        ssl->setSslConfiguration(config);
        connect(ssl, &QSslSocket::encrypted, &Progress::instance(), &Progress::changed);
        connect(ssl, &QAbstractSocket::errorOccurred, this, [this, ssl](QAbstractSocket::SocketError) {
            QTextStream(stderr) << name << ": TLS socket error: " << ssl->errorString() << '\n';
        });
        // Not ignored: any verification error aborts the handshake.
        connect(ssl, QOverload<const QList<QSslError> &>::of(&QSslSocket::sslErrors), this,
                [this](const QList<QSslError> &errors) {
                    for (const QSslError &error : errors)
                        QTextStream(stderr) << name << ": TLS verification error: " << error.errorString() << '\n';
                });
    }
    connect(socket, &QTcpSocket::readyRead, this, &GuideClient::onReadyRead);
    connect(socket, &QTcpSocket::disconnected, this, &GuideClient::onDisconnected);
}

void GuideClient::onDisconnected()
{
    emit Progress::instance().changed();
}

bool GuideClient::connectTo(const QString &host, quint16 port)
{
    if (!g_tls) {
        socket->connectToHost(host, port);
        return socket->waitForConnected(10000);
    }
    // Runs the event loop (the other clients keep reading) until the
    // handshake is done or the socket gave up.
    auto *ssl = static_cast<QSslSocket *>(socket);
    ssl->connectToHostEncrypted(host, port);
    bool settled = waitUntil([ssl]() {
        return ssl->isEncrypted() || ssl->state() == QAbstractSocket::UnconnectedState;
    });
    if (settled && ssl->isEncrypted())
        return true;
    QTextStream(stderr) << name << ": TLS connection to " << host << ':' << port << " failed: "
                        << (settled ? ssl->errorString() : QStringLiteral("no encrypted() within 10 s")) << '\n';
    return false;
}

// The guide writes each message into a QByteArray with QDataStream and
// writes it to the socket. FramedClient puts the block size first.
void GuideClient::send(const QByteArray &message)
{
    if (framed) {
        QByteArray block;
        QDataStream out(&block, QIODevice::WriteOnly);
        out.setVersion(QDataStream::Qt_5_9);
        out << static_cast<quint32>(message.size());
        block.append(message);
        socket->write(block);
    } else {
        socket->write(message);
    }
    socket->flush();
}

void GuideClient::registerClient(const QString &userId)
{
    QByteArray message;
    QDataStream stream(&message, QIODevice::WriteOnly);
    stream.setVersion(QDataStream::Qt_5_9);
    stream << static_cast<quint8>(MSG_HEARTBEAT);
    QByteArray userIdData = userId.toUtf8();
    stream << static_cast<quint16>(userIdData.size());
    stream.writeRawData(userIdData.data(), userIdData.size());
    send(message);
}

void GuideClient::initiateCall(const QString &callee, bool isVideoCall)
{
    QByteArray message;
    QDataStream stream(&message, QIODevice::WriteOnly);
    stream.setVersion(QDataStream::Qt_5_9);
    stream << static_cast<quint8>(MSG_CALL_REQUEST);
    stream << callee;
    stream << static_cast<quint8>(isVideoCall ? 1 : 0);
    send(message);
}

void GuideClient::acceptCall(const QString &callId)
{
    QByteArray message;
    QDataStream stream(&message, QIODevice::WriteOnly);
    stream.setVersion(QDataStream::Qt_5_9);
    stream << static_cast<quint8>(MSG_CALL_ACCEPT);
    stream << callId;
    send(message);
}

void GuideClient::rejectCall(const QString &callId, const QString &reason)
{
    QByteArray message;
    QDataStream stream(&message, QIODevice::WriteOnly);
    stream.setVersion(QDataStream::Qt_5_9);
    stream << static_cast<quint8>(MSG_CALL_REJECT);
    stream << callId;
    stream << reason;
    send(message);
}

void GuideClient::endCall(const QString &callId)
{
    QByteArray message;
    QDataStream stream(&message, QIODevice::WriteOnly);
    stream.setVersion(QDataStream::Qt_5_9);
    stream << static_cast<quint8>(MSG_CALL_END);
    stream << callId;
    send(message);
}

void GuideClient::sendMediaData(const QByteArray &mediaData)
{
    QByteArray message;
    QDataStream stream(&message, QIODevice::WriteOnly);
    stream.setVersion(QDataStream::Qt_5_9);
    stream << static_cast<quint8>(MSG_MEDIA_DATA);
    stream.writeRawData(mediaData.data(), mediaData.size());
    send(message);
}

void GuideClient::sendText(const QString &to, const QString &text)
{
    QByteArray message;
    QDataStream stream(&message, QIODevice::WriteOnly);
    stream.setVersion(QDataStream::Qt_5_9);
    stream << static_cast<quint8>(MSG_TEXT);
    stream << to << text;
    send(message);
}

void GuideClient::sendFile(const QString &to, const QString &fileName, const QByteArray &data)
{
    QByteArray message;
    QDataStream stream(&message, QIODevice::WriteOnly);
    stream.setVersion(QDataStream::Qt_5_9);
    stream << static_cast<quint8>(MSG_FILE);
    stream << to << fileName << data;
    send(message);
}

void GuideClient::sendHeartbeat()
{
    QByteArray message;
    QDataStream stream(&message, QIODevice::WriteOnly);
    stream.setVersion(QDataStream::Qt_5_9);
    stream << static_cast<quint8>(MSG_HEARTBEAT);
    send(message);
}

void GuideClient::onReadyRead()
{
    pending.append(socket->readAll());
    while (!pending.isEmpty() && handleServerMessage()) {
    }
    emit Progress::instance().changed();
}

// Like the guide's handleServerMessage: a QDataStream over the data, the
// type byte first, a switch. Media takes the rest of what arrived (seed) or
// of the block (framed).
bool GuideClient::handleServerMessage()
{
    QByteArray data;
    if (framed) {
        if (pending.size() < 4)
            return false;
        QDataStream sizeStream(pending);
        sizeStream.setVersion(QDataStream::Qt_5_9);
        quint32 blockSize;
        sizeStream >> blockSize;
        if (static_cast<quint32>(pending.size() - 4) < blockSize)
            return false;
        data = pending.mid(4, static_cast<int>(blockSize));
    } else {
        data = pending;
    }

    QDataStream stream(data);
    stream.setVersion(QDataStream::Qt_5_9);
    quint8 msgType;
    stream >> msgType;
    Event event;
    event.type = msgType;
    if (!decodeOne(stream, msgType, event))
        return false;  // incomplete (seed): wait for more bytes
    int used = framed ? 4 + data.size() : static_cast<int>(stream.device()->pos());
    pending.remove(0, used);
    if (msgType == MSG_MEDIA_DATA)
        media.append(event.data);
    events.append(event);
    return true;
}

bool GuideClient::decodeOne(QDataStream &stream, quint8 msgType, Event &event)
{
    switch (static_cast<MessageType>(msgType)) {
    case MSG_TEXT:
        stream >> event.from >> event.text;
        break;
    case MSG_FILE:
        stream >> event.from >> event.fileName >> event.data;
        break;
    case MSG_CALL_REQUEST:
        stream >> event.callId >> event.caller >> event.isVideo;
        break;
    case MSG_CALL_ACCEPT:
        stream >> event.callId;
        break;
    case MSG_CALL_REJECT:
        stream >> event.callId >> event.reason;
        break;
    case MSG_CALL_END:
        stream >> event.callId;
        break;
    case MSG_MEDIA_DATA: {
        // The guide reads byte by byte until atEnd(); same result.
        QByteArray mediaData;
        while (!stream.atEnd()) {
            char byte;
            stream.readRawData(&byte, 1);
            mediaData.append(byte);
        }
        event.data = mediaData;
        break;
    }
    case MSG_HEARTBEAT:
        break;
    case MSG_ERROR:
        stream >> event.code >> event.detail;
        break;
    default:
        break;
    }
    return stream.status() == QDataStream::Ok;
}

Event GuideClient::waitFor(int type, bool *ok, int timeoutMs)
{
    int found = -1;
    auto seen = [&]() {
        for (int i = 0; i < events.size(); ++i) {
            if (events[i].type == type) {
                found = i;
                return true;
            }
        }
        return false;
    };
    *ok = waitUntil(seen, timeoutMs);
    return *ok ? events.takeAt(found) : Event();
}

QByteArray GuideClient::waitForMedia(int count, bool *ok, int timeoutMs)
{
    *ok = waitUntil([&]() { return media.size() >= count; }, timeoutMs);
    QByteArray got = media.left(count);
    media.remove(0, got.size());
    return got;
}

bool GuideClient::waitForDisconnect(int timeoutMs)
{
    return waitUntil([&]() { return socket->state() == QAbstractSocket::UnconnectedState; },
                     timeoutMs);
}

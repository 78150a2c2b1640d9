// `qtclient golden`: every message of PROTOCOL.md section 2 written by
// QDataStream (Qt_5_9) itself, in both framings, one line each:
// `<name> <hex bytes>`. tests/qt/golden.txt is this output; the Rust codec
// tests (tests/qt_golden.rs) must produce the same bytes.
#include <QByteArray>
#include <QDataStream>
#include <QString>
#include <QTextStream>
#include <functional>

#include "guideclient.h"

namespace {

const QString kCallId = QStringLiteral("11111111-2222-4333-8444-555555555555");

using Writer = std::function<void(QDataStream &)>;

QByteArray build(const Writer &write, bool framed)
{
    QByteArray message;
    QDataStream stream(&message, QIODevice::WriteOnly);
    stream.setVersion(QDataStream::Qt_5_9);
    write(stream);
    if (!framed)
        return message;
    // The Qt "block size" idiom: quint32 length, then the block.
    QByteArray block;
    QDataStream out(&block, QIODevice::WriteOnly);
    out.setVersion(QDataStream::Qt_5_9);
    out << static_cast<quint32>(message.size());
    block.append(message);
    return block;
}

void registration(QDataStream &s, const QString &userId)
{
    s << static_cast<quint8>(MSG_HEARTBEAT);
    QByteArray userIdData = userId.toUtf8();
    s << static_cast<quint16>(userIdData.size());
    s.writeRawData(userIdData.data(), userIdData.size());
}

void raw(QDataStream &s, const QByteArray &bytes)
{
    s.writeRawData(bytes.data(), bytes.size());
}

}  // namespace

int printGolden()
{
    const QString emojiUser = QString::fromUtf8("\xF0\x9F\x98\x80user");
    const QString emojiText = QString::fromUtf8("h\xC3\xA9llo \xF0\x9F\x98\x80 \xE4\xBD\xA0\xE5\xA5\xBD");
    const QByteArray two("\x01\x02", 2);
    QList<QPair<QString, Writer>> messages = {
        {"client.register", [](QDataStream &s) { registration(s, "alice"); }},
        {"client.register.emoji", [&](QDataStream &s) { registration(s, emojiUser); }},
        {"client.text", [](QDataStream &s) { s << quint8(MSG_TEXT) << QString("bob") << QString("hi"); }},
        {"client.text.null_and_empty", [](QDataStream &s) { s << quint8(MSG_TEXT) << QString() << QString(""); }},
        {"client.text.emoji", [&](QDataStream &s) { s << quint8(MSG_TEXT) << emojiUser << emojiText; }},
        {"client.file", [&](QDataStream &s) { s << quint8(MSG_FILE) << QString("bob") << QString("a.bin") << two; }},
        {"client.file.null", [](QDataStream &s) { s << quint8(MSG_FILE) << QString("bob") << QString() << QByteArray(); }},
        {"client.call_request", [](QDataStream &s) { s << quint8(MSG_CALL_REQUEST) << QString("bob") << quint8(1); }},
        {"client.call_accept", [](QDataStream &s) { s << quint8(MSG_CALL_ACCEPT) << kCallId; }},
        {"client.call_reject", [](QDataStream &s) { s << quint8(MSG_CALL_REJECT) << kCallId << QString("busy"); }},
        {"client.call_end.null", [](QDataStream &s) { s << quint8(MSG_CALL_END) << QString(); }},
        {"client.media", [](QDataStream &s) { s << quint8(MSG_MEDIA_DATA); raw(s, QByteArray("\x01\x02\x03", 3)); }},
        {"client.heartbeat", [](QDataStream &s) { s << quint8(MSG_HEARTBEAT); }},
        {"client.heartbeat.suffix", [](QDataStream &s) { registration(s, "alice"); }},
        {"server.text", [](QDataStream &s) { s << quint8(MSG_TEXT) << QString("alice") << QString("hi"); }},
        {"server.text.emoji", [&](QDataStream &s) { s << quint8(MSG_TEXT) << emojiUser << emojiText; }},
        {"server.file", [&](QDataStream &s) { s << quint8(MSG_FILE) << QString("alice") << QString("a.bin") << two; }},
        {"server.call_request", [](QDataStream &s) { s << quint8(MSG_CALL_REQUEST) << kCallId << QString("alice") << quint8(1); }},
        {"server.call_accept", [](QDataStream &s) { s << quint8(MSG_CALL_ACCEPT) << kCallId; }},
        {"server.call_reject", [](QDataStream &s) { s << quint8(MSG_CALL_REJECT) << kCallId << QString("timeout"); }},
        {"server.call_end", [](QDataStream &s) { s << quint8(MSG_CALL_END) << kCallId; }},
        {"server.media", [](QDataStream &s) { s << quint8(MSG_MEDIA_DATA); raw(s, QByteArray("\x01\x02\x03", 3)); }},
        {"server.heartbeat", [](QDataStream &s) { s << quint8(MSG_HEARTBEAT); }},
        {"server.error", [](QDataStream &s) { s << quint8(MSG_ERROR) << QString("offline") << QString("hi"); }},
    };
    QTextStream out(stdout);
    out << "# Written by Qt " << qVersion() << " QDataStream (Qt_5_9). Regenerate: make qt-golden\n";
    for (const auto &message : messages) {
        for (bool framed : {false, true}) {
            QString name = message.first + (framed ? ".framed" : ".seed");
            out << name << ' ' << build(message.second, framed).toHex(' ') << '\n';
        }
    }
    return 0;
}

// qtclient: the real Qt 5 client used by the interop tests.
//   qtclient golden                    print Qt-written golden vectors
//   qtclient scenario NAME HOST PORT   run one scenario against a relay
//   qtclient scenario NAME HOST PORT --tls CA.pem
//                                      the same over TLS, trusting only CA.pem
#include <QCoreApplication>
#include <QTextStream>
#include <QTimer>

#include "guideclient.h"

int printGolden();
int runScenario(const QString &name, const QString &host, quint16 port);

int main(int argc, char **argv)
{
    QCoreApplication app(argc, argv);
    const QStringList args = app.arguments();
    if (args.size() == 2 && args[1] == "golden")
        return printGolden();
    const bool tls = args.size() == 7 && args[5] == "--tls";
    if ((args.size() == 5 || tls) && args[1] == "scenario") {
        // A hard stop so a hung scenario fails instead of hanging the suite.
        QTimer::singleShot(60000, []() {
            QTextStream(stderr) << "FAIL: scenario did not finish within 60 s\n";
            ::exit(3);
        });
        bool ok = false;
        quint16 port = args[4].toUShort(&ok);
        if (!ok)
            return 2;
        if (tls) {
            QString error;
            if (!enableTls(args[6], &error)) {
                QTextStream(stderr) << "FAIL: TLS mode unavailable: " << error << '\n';
                return 4;
            }
        }
        return runScenario(args[2], args[3], port);
    }
    QTextStream(stderr) << "usage: qtclient golden | qtclient scenario NAME HOST PORT [--tls CA.pem]\n";
    return 2;
}

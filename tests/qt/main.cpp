// qtclient: the real Qt 5 client used by the interop tests.
//   qtclient golden                    print Qt-written golden vectors
//   qtclient scenario NAME HOST PORT   run one scenario against a relay
#include <QCoreApplication>
#include <QTextStream>
#include <QTimer>

int printGolden();
int runScenario(const QString &name, const QString &host, quint16 port);

int main(int argc, char **argv)
{
    QCoreApplication app(argc, argv);
    const QStringList args = app.arguments();
    if (args.size() == 2 && args[1] == "golden")
        return printGolden();
    if (args.size() == 5 && args[1] == "scenario") {
        // A hard stop so a hung scenario fails instead of hanging the suite.
        QTimer::singleShot(60000, []() {
            QTextStream(stderr) << "FAIL: scenario did not finish within 60 s\n";
            ::exit(3);
        });
        bool ok = false;
        quint16 port = args[4].toUShort(&ok);
        if (!ok)
            return 2;
        return runScenario(args[2], args[3], port);
    }
    QTextStream(stderr) << "usage: qtclient golden | qtclient scenario NAME HOST PORT\n";
    return 2;
}

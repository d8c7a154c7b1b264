import Configuration
import LNet
import Testing
@testable import RDMALND

@Suite struct TunablesTests {
    @Test func defaultsWhenNothingIsSet() throws {
        let tunables = try LNDTunables.fromEnvironment([:])
        #expect(tunables == LNDTunables())
        #expect(tunables.peerCredits == 8)
        #expect(tunables.getMode == .pull)
        #expect(tunables.effectiveConcurrentSends == 16)
    }

    @Test func readsEveryKindOfValueFromTheEnvironment() throws {
        let tunables = try LNDTunables.fromEnvironment([
            "LND_PEER_CREDITS": "32", "LND_CREDITS": "1024", "LND_IMMEDIATE_SIZE": "8K", "LND_GET_MODE": "push",
            "LND_PUT_MODE": "PUSH", "LND_CHECKSUM": "1", "LND_IB_MTU": "2048", "LND_REGISTRATION_CACHE_SIZE": "1G",
            "LND_DEVICE": "rxe0", "LND_RNR_RETRY_COUNT": "7", "LND_NTX": "64", "LND_REGISTRATION_OFFLOAD": "4M",
        ])
        #expect(tunables.peerCredits == 32)
        #expect(tunables.credits == 1024)
        #expect(tunables.immediateSize == 8192)
        #expect(tunables.getMode == .push)
        #expect(tunables.putMode == .push)
        #expect(tunables.checksum)
        #expect(tunables.ibMTU == 2048)
        #expect(tunables.registrationCacheSize == 1 << 30)
        #expect(tunables.device == "rxe0")
        #expect(tunables.rnrRetryCount == 7)
        #expect(tunables.ntx == 64)
        #expect(tunables.registrationOffload == 4 << 20)
    }

    @Test(arguments: [
        ("LND_PEER_CREDITS", "0", "1...255"), ("LND_PEER_CREDITS", "abc", "1...255"), ("LND_PEER_CREDITS", "256", "1...255"),
        ("LND_TIMEOUT", "-1", "1...3600"), ("LND_GET_MODE", "sideways", "pull, push"), ("LND_IB_MTU", "1500", "0, 256"),
        ("LND_CHECKSUM", "maybe", "0, 1"), ("LND_IMMEDIATE_SIZE", "1G", "0...65536 bytes"), ("LND_DEVICE", "rxe0;rm", "device name"),
        ("LND_REGISTRATION_OFFLOAD", "2T", "0...1099511627776 bytes"),
    ])
    func badValueNamesTheVariableAndItsRange(variable: String, value: String, allowed: String) {
        #expect {
            _ = try LNDTunables.fromEnvironment([variable: value])
        } throws: { error in
            guard let error = error as? TunableError else { return false }
            return error.variable == variable && error.value == value && error.description.contains(allowed)
        }
    }

    @Test func rulesAcrossTunables() {
        #expect(throws: TunableError.self) { _ = try LNDTunables.fromEnvironment(["LND_PEER_CREDITS": "64", "LND_CREDITS": "8"]) }
    }

    @Test func variableNamesMatchTheEnvironmentProvider() throws {
        // Each key, read through swift-configuration's environment provider, finds the variable the report names.
        for definition in LNDTunables.definitions {
            let reader = ConfigReader(provider: EnvironmentVariablesProvider(environmentVariables: [definition.variable: "x"]))
            #expect(reader.string(forKey: ConfigKey(definition.key)) == "x", "\(definition.key) -> \(definition.variable)")
        }
    }

    @Test func reportSaysWhereEachValueCameFrom() throws {
        let environment = ["LND_TIMEOUT": "5"]
        let report = try LNDTunables.fromEnvironment(environment).report(environment: environment)
        #expect(report.count == LNDTunables.definitions.count)
        let timeout = try #require(report.first { $0.variable == "LND_TIMEOUT" })
        #expect(timeout.value == "5")
        #expect(timeout.defaultValue == "50")
        #expect(timeout.source == .environment)
        #expect(report.first { $0.variable == "LND_PEER_CREDITS" }?.source == .defaultValue)
    }

    @Test func sizesTakeBinarySuffixes() {
        #expect(parseSize("4096") == 4096)
        #expect(parseSize("4k") == 4096)
        #expect(parseSize("64KiB") == 65536)
        #expect(parseSize("1M") == 1 << 20)
        #expect(parseSize("") == nil)
        #expect(parseSize("1.5M") == nil)
        #expect(parseSize("99999999999999999999G") == nil)
    }
}

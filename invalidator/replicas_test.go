package invalidator

import (
	"reflect"
	"testing"
)

func TestInfoReplicas(t *testing.T) {
	info := "# Replication\r\nrole:master\r\nconnected_slaves:2\r\n" +
		"slave0:ip=127.0.0.1,port=6380,state=online,offset=10,lag=0\r\n" +
		"slave1:ip=127.0.0.1,port=6381,state=wait_bgsave,offset=0,lag=0\r\nmaster_failover_state:no-failover\r\n"
	if n, role := infoReplicas(info); n != 1 || role != "master" {
		t.Errorf("infoReplicas = %d, %q; want 1 online replica of a master", n, role)
	}
}

func TestClusterReplicas(t *testing.T) {
	nodes := `a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
a2 127.0.0.1:7001@17001 master - 0 0 2 connected 5461-10922
a3 127.0.0.1:7002@17002 master - 0 0 3 connected 10923-16383
b1 127.0.0.1:7003@17003 slave a1 0 0 1 connected
b2 127.0.0.1:7004@17004 slave,fail a2 0 0 2 disconnected
b3 127.0.0.1:7005@17005 slave a3 0 0 3 connected
c3 127.0.0.1:7006@17006 slave a3 0 0 3 connected
`
	want := []MasterReplicas{{"127.0.0.1:7000", 1}, {"127.0.0.1:7001", 0}, {"127.0.0.1:7002", 2}}
	if got := clusterReplicas(nodes); !reflect.DeepEqual(got, want) {
		t.Errorf("clusterReplicas = %v, want %v", got, want)
	}
}

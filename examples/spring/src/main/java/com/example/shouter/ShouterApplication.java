package com.example.shouter;

import org.springframework.boot.SpringApplication;
import org.springframework.boot.autoconfigure.SpringBootApplication;
import org.springframework.context.ConfigurableApplicationContext;

/**
 * One application, two roles, chosen by profile:
 * {@code listener} serves shout requests ({@link ShoutListener}), and
 * {@code client} calls an echo service with a {@code ReplyingKafkaTemplate}
 * ({@link EchoClient}), prints what came back and exits.
 */
@SpringBootApplication
public class ShouterApplication {

    public static void main(String[] args) {
        ConfigurableApplicationContext context = SpringApplication.run(ShouterApplication.class, args);
        if (context.getEnvironment().matchesProfiles("client")) {
            // The client's work is done once its runner returned.
            System.exit(SpringApplication.exit(context));
        }
    }
}
